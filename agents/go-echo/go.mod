module toka.example/go-echo

go 1.24
