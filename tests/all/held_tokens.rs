//! A long-running process holds a verified token (README, Tokens: "a repeated use skips the signature chain but
//! re-checks the root key's status, revocation, and every time check"). `toka-host mcp` over stdio, driven by the
//! official MCP client, is that process here: while it runs, another `toka-host` process retires its token's key,
//! lets the key's rotation overlap end, or revokes the token, and the server's very next call is refused, saying
//! why. Each test first shows the same server answering the same call (the positive control), and a token not
//! touched by the change keeps working in a server of its own.
//!
//! Regression: the MCP server verified its token once at startup and only re-checked revocation and time, so a
//! retired key's token kept working until the server restarted.

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use toka_tests::{Ran, root, shared_cache, toka_host, toka_with};

fn t(home: &Path, args: &[&str]) -> Ran {
    toka_with(args, None, &[("TOKA_HOME", home.to_str().unwrap())])
}

/// A home with a root key and the `echo` tool.
fn home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    t(home.path(), &["key", "init"]).expect_code(0);
    let echo = root().join("target/tools/echo.wasm");
    t(home.path(), &["tool", "add", echo.to_str().unwrap()]).expect_code(0);
    home
}

fn mint(home: &Path) -> String {
    let r = t(home, &["token", "mint", "--agent", "llm", "--grant", "tool:echo"]);
    r.expect_code(0);
    r.stdout.trim().to_string()
}

type Client = RunningService<RoleClient, ()>;

async fn serve(home: &Path, token: &str) -> Client {
    let mut cmd = tokio::process::Command::new(toka_host());
    cmd.args(["mcp", "--token", token]).env("TOKA_HOME", home).env("TOKA_CACHE_DIR", shared_cache());
    ().serve(rmcp::transport::TokioChildProcess::new(cmd).unwrap()).await.unwrap()
}

async fn echo(client: &Client, n: u64) -> CallToolResult {
    let args = serde_json::json!({ "n": n }).as_object().unwrap().clone();
    client.call_tool(CallToolRequestParams::new("echo").with_arguments(args)).await.unwrap()
}

#[track_caller]
fn answered(result: &CallToolResult, n: u64) {
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(result.structured_content.as_ref().unwrap()["n"], n);
}

#[track_caller]
fn refused(result: &CallToolResult, message: &str) {
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let text = serde_json::to_string(&result.content).unwrap();
    assert!(text.contains(message), "expected {message:?} in {text}");
}

/// Runs a test's client side, bounded: on a timeout the clients are dropped, which kills their servers.
fn run(test: impl std::future::Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), test).await })
        .expect("the test's calls ended within 120 s");
}

#[test]
fn retiring_the_key_refuses_a_token_a_server_already_holds() {
    let home = home();
    let h = home.path();
    let old = mint(h);
    run(async {
        let server = serve(h, &old).await;
        answered(&echo(&server, 1).await, 1);
        t(h, &["key", "rotate", "--overlap", "1h"]).expect_code(0);
        answered(&echo(&server, 2).await, 2);
        let new = mint(h);
        let fresh = serve(h, &new).await;
        t(h, &["key", "retire", "1"]).expect_code(0);
        refused(&echo(&server, 3).await, "token refused: token is signed by root key 1, which is retired");
        answered(&echo(&fresh, 4).await, 4);
        server.cancel().await.unwrap();
        fresh.cancel().await.unwrap();
    });
}

#[test]
fn the_end_of_a_rotation_overlap_refuses_a_token_a_server_already_holds() {
    let home = home();
    let h = home.path();
    let old = mint(h);
    run(async {
        let server = serve(h, &old).await;
        answered(&echo(&server, 1).await, 1);
        let rotated = Instant::now();
        t(h, &["key", "rotate", "--overlap", "3s"]).expect_code(0);
        let fresh = serve(h, &mint(h)).await;
        // Inside the overlap (unless this machine took 3 s to get here, which the test would rather know).
        answered(&echo(&server, 2).await, 2);
        assert!(rotated.elapsed() < Duration::from_secs(3), "took {:?} to call inside the overlap", rotated.elapsed());
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(rotated.elapsed()) + Duration::from_millis(200)).await;
        refused(
            &echo(&server, 3).await,
            "token refused: token is signed by root key 1, whose overlap window after rotation has ended",
        );
        answered(&echo(&fresh, 4).await, 4);
        server.cancel().await.unwrap();
        fresh.cancel().await.unwrap();
    });
}

#[test]
fn revoking_refuses_a_token_a_server_already_holds() {
    let home = home();
    let h = home.path();
    let (revoked, kept) = (mint(h), mint(h));
    run(async {
        let server = serve(h, &revoked).await;
        let other = serve(h, &kept).await;
        answered(&echo(&server, 1).await, 1);
        t(h, &["token", "revoke", &revoked]).expect_code(0);
        refused(&echo(&server, 2).await, "is revoked");
        answered(&echo(&other, 3).await, 3);
        server.cancel().await.unwrap();
        other.cancel().await.unwrap();
    });
    // The refused call is on record as refused, under the revoked token.
    let rejected = t(h, &["events", "--json", "--kind", "op.rejected"]);
    assert_eq!(rejected.stdout.lines().count(), 1, "{}", rejected.stdout);
    assert!(rejected.stdout.contains("is revoked"), "{}", rejected.stdout);
}

/// When `file` last changed (its ctime, which no program can set back).
pub fn changed_at(file: &Path) -> SystemTime {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(file).unwrap();
    let nanos = u32::try_from(meta.ctime_nsec()).unwrap();
    SystemTime::UNIX_EPOCH + Duration::new(u64::try_from(meta.ctime()).unwrap(), nanos)
}

/// How long after a file's last change the host trusts a cached parse of it (`toka_host::filecache::RACY`, 2 s),
/// with a margin.
pub const SETTLED: Duration = Duration::from_millis(2_500);

/// Sleeps until `file` has been unchanged for [`SETTLED`]: the host's next read of it is trusted from then on, so
/// only the stamp check of its cache (see `host/src/filecache.rs`) stands between a later change and a stale answer.
pub fn until_settled(file: &Path) {
    let settled = changed_at(file) + SETTLED;
    if let Ok(left) = settled.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
}

/// The server keeps the key file parsed between calls and only looks at the file's stamp. With the file settled
/// (the cache trusted, not re-read at every call as it is right after a change), a retirement written by another
/// process is still seen at the very next call; a token of the active key, held by another server, keeps working.
#[test]
fn a_key_retired_after_the_server_cached_the_key_file_is_seen_at_the_next_call() {
    let home = home();
    let h = home.path();
    let old = mint(h);
    t(h, &["key", "rotate", "--overlap", "1h"]).expect_code(0);
    let new = mint(h);
    until_settled(&h.join("keys.json"));
    run(async {
        let server = serve(h, &old).await;
        let fresh = serve(h, &new).await;
        // The control, and the reads the cache trusts from now on (the file is older than the window).
        for n in 1..=3 {
            answered(&echo(&server, n).await, n);
            answered(&echo(&fresh, n).await, n);
        }
        t(h, &["key", "retire", "1"]).expect_code(0);
        refused(&echo(&server, 4).await, "token refused: token is signed by root key 1, which is retired");
        answered(&echo(&fresh, 5).await, 5);
        server.cancel().await.unwrap();
        fresh.cancel().await.unwrap();
    });
}
