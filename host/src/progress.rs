//! Progress of long work (a first compile of a large component, catching up on a long log, waiting for a remote
//! run): said on stderr once the work has lasted a second, as a spinner or a bar on a terminal, as plain lines when
//! stderr is not one, or as log records in a server (whose stderr is its log).
//!
//! Work that ends within [`DELAY`] shows nothing, so a cached load or a short catch-up prints no line at all. The
//! library reports to a [`Progress`] its caller chose ([`Silent`] unless told otherwise); this module never decides
//! anything about the work, never slows it (drawing happens on a thread of its own) and never writes to stdout,
//! which belongs to the guest and to reports.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long work goes unmentioned.
pub const DELAY: Duration = Duration::from_secs(1);

/// How often plain lines report a position (a count of events, for instance).
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Where progress is said.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// Long work begins: `what` says what it is (`compiling x.wasm (17.9 MiB)`). Dropping the returned task without
    /// [`Task::finish`] ends it silently.
    fn begin(&self, what: String) -> Box<dyn Task>;

    /// Gets ready to say long work, for a caller with time to spare before work begins on another thread (a
    /// reporter that speaks from a thread starts it now, so that the work does not). Optional: `begin` does it too.
    fn prepare(&self) {}
}

/// One piece of long work under way.
pub trait Task: Send {
    /// Where the work is, out of how much (a bar instead of a spinner once the total is known).
    fn position(&self, done: u64, total: u64);
    /// The work is over; `said` is the line to show if the work was shown (`None`: just clear it).
    fn finish(self: Box<Self>, said: Option<String>);
    /// Runs `print` with the spinner or bar out of the way (for output to the same terminal meanwhile).
    fn suspend(&self, print: &mut dyn FnMut()) {
        print();
    }
}

/// Says nothing (library use, benches).
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

struct SilentTask;

impl Task for SilentTask {
    fn position(&self, _: u64, _: u64) {}
    fn finish(self: Box<Self>, _: Option<String>) {}
}

impl Progress for Silent {
    fn begin(&self, _: String) -> Box<dyn Task> {
        Box::new(SilentTask)
    }
}

/// How a [`Delayed`] reporter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// indicatif on stderr: a spinner with the elapsed time (Cranelift gives no percentage), or a bar with a count.
    Terminal,
    /// `toka-host: ...` lines on stderr.
    Plain,
    /// `tracing` records (a server's stderr is its log, text or JSON lines).
    Log,
}

/// Says long work after [`DELAY`], in one [`Style`].
///
/// Work that ends within its delay costs no thread of its own: one process-wide thread (started by
/// [`Progress::prepare`] or the first task) waits out every task's delay, and only work that outlasts it gets a thread
/// to speak from. So a cached load does not start a thread and wake it again to end it.
#[derive(Debug, Clone, Copy)]
pub struct Delayed {
    pub style: Style,
    pub delay: Duration,
}

impl Delayed {
    /// A spinner when stderr is a terminal, plain lines otherwise.
    pub fn console() -> Arc<dyn Progress> {
        let style = if std::io::stderr().is_terminal() { Style::Terminal } else { Style::Plain };
        Arc::new(Delayed { style, delay: DELAY })
    }

    /// Log records (servers).
    pub fn log() -> Arc<dyn Progress> {
        Arc::new(Delayed { style: Style::Log, delay: DELAY })
    }
}

enum Message {
    Finish(Option<String>),
}

struct Shared {
    done: AtomicU64,
    total: AtomicU64,
    /// The terminal's bar while it is shown.
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    speech: std::sync::Mutex<Speech>,
    /// Signalled when the speech is [`Speech::Said`].
    said: std::sync::Condvar,
}

/// Where the work's speech is: a task that ends before it is shown waits for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speech {
    /// Silent, until the delay has passed.
    Waiting,
    /// Showing the work: its last line must come before whatever the caller prints next.
    Speaking,
    /// The work was shown, and its last line is out.
    Said,
    /// The work ended unshown: it never will be.
    Over,
}

impl Shared {
    fn bar(&self) -> std::sync::MutexGuard<'_, Option<indicatif::ProgressBar>> {
        self.bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn speech(&self) -> std::sync::MutexGuard<'_, Speech> {
        self.speech.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The work's last line is out (or will never be).
    fn said(&self) {
        *self.speech() = Speech::Said;
        self.said.notify_all();
    }
}

/// A task not yet shown, held by the waiting thread until its delay has passed.
struct Unshown {
    style: Style,
    what: String,
    started: Instant,
    due: Instant,
    shared: Arc<Shared>,
    listen: mpsc::Receiver<Message>,
}

/// The tasks the waiting thread holds, and whether it runs.
#[derive(Default)]
struct Waiting {
    held: std::sync::Mutex<Held>,
    /// Signalled when a task is begun while the waiting thread is parked.
    begun: std::sync::Condvar,
    running: std::sync::OnceLock<bool>,
}

#[derive(Default)]
struct Held {
    unshown: Vec<Unshown>,
    /// The waiting thread sleeps until a task is begun (it had nothing to wait for during [`PARK_AFTER`]).
    parked: bool,
}

impl Held {
    /// Takes out the tasks whose delay has passed by `now`, forgetting those that ended unshown; says when the next
    /// of the rest is due.
    fn take_due(&mut self, now: Instant) -> (Vec<Unshown>, Option<Instant>) {
        self.unshown.retain(|task| *task.shared.speech() == Speech::Waiting);
        let (due, left): (Vec<Unshown>, Vec<Unshown>) = self.unshown.drain(..).partition(|task| task.due <= now);
        self.unshown = left;
        (due, self.unshown.iter().map(|task| task.due).min())
    }
}

/// How long the waiting thread sleeps at most: a task begun meanwhile is seen before its delay has passed if the
/// delay is at least this long (every reporter's is), else at most this late.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// How long the waiting thread goes on looking without a task before it parks: a one-run process never waits for it
/// to wake, and an idle server does not wake it four times a second.
const PARK_AFTER: Duration = Duration::from_secs(2);

static WAITING: std::sync::LazyLock<Waiting> = std::sync::LazyLock::new(Waiting::default);

impl Waiting {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Holds `task` until its delay has passed, waking the waiting thread if it is parked.
    fn hold(&self, task: Unshown) {
        let mut held = self.held();
        held.unshown.push(task);
        if held.parked {
            held.parked = false;
            self.begun.notify_one();
        }
    }
}

/// Threads that wake every few milliseconds anyway and look at the held tasks on each wake ([`look`]): engines'
/// epoch tickers. While one runs, no waiting thread is started, so a run (whose engine ticks) starts one thread
/// fewer.
static LOOKERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A thread that wakes often anyway starts calling [`look`] on each of its wakes (every few milliseconds, a small
/// fraction of [`DELAY`]). Called before it starts, so that work begun meanwhile is looked after.
pub fn looker_started() {
    LOOKERS.fetch_add(1, Ordering::SeqCst);
}

/// A thread counted by [`looker_started`] stops looking: if it was the last and tasks are still held, the waiting
/// thread takes them over.
pub fn looker_stopped() {
    if LOOKERS.fetch_sub(1, Ordering::SeqCst) == 1 && !WAITING.held().unshown.is_empty() {
        start_waiting();
    }
}

/// Shows every held task whose delay has passed, each from a thread of its own (what the waiting thread does on each
/// of its wakes); for a thread counted by [`looker_started`].
pub fn look() {
    let due = {
        let mut held = WAITING.held();
        if held.unshown.is_empty() {
            return;
        }
        held.take_due(Instant::now()).0
    };
    for task in due {
        show(task);
    }
}

/// Gets held tasks looked after: by a thread counted by [`looker_started`] if one runs, else by the process-wide
/// waiting thread, started now if it is not running yet (for a caller with time to spare before work that may be
/// long begins on another thread, so that the work does not start it; otherwise the first [`Delayed`] task does).
/// False if nothing will look.
fn prepare() -> bool {
    LOOKERS.load(Ordering::SeqCst) > 0 || start_waiting()
}

/// Starts the process-wide waiting thread, if it is not running yet.
fn start_waiting() -> bool {
    *WAITING
        .running
        .get_or_init(|| std::thread::Builder::new().name("toka-progress".into()).spawn(|| wait_out(&WAITING)).is_ok())
}

/// The waiting thread: shows each task whose delay has passed and that has not ended, on a thread of its own.
fn wait_out(waiting: &Waiting) {
    let mut busy = Instant::now();
    loop {
        let now = Instant::now();
        let (due, next) = {
            let mut held = waiting.held();
            let (due, next) = held.take_due(now);
            if next.is_some() || !due.is_empty() {
                busy = now;
            } else if now.duration_since(busy) >= PARK_AFTER {
                held.parked = true;
                while held.parked {
                    held = waiting.begun.wait(held).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                busy = Instant::now();
                continue;
            }
            (due, next)
        };
        for task in due {
            show(task);
        }
        let sleep = next.map_or(LOOK_EVERY, |next| next.saturating_duration_since(Instant::now()).min(LOOK_EVERY));
        std::thread::sleep(sleep);
    }
}

/// Shows `task` from a thread of its own, unless it has just ended.
fn show(task: Unshown) {
    {
        let mut speech = task.shared.speech();
        if *speech != Speech::Waiting {
            return;
        }
        *speech = Speech::Speaking;
    }
    let shared = task.shared.clone();
    let spoken = std::thread::Builder::new().name("toka-progress".into()).spawn(move || {
        speak(task.style, &task.what, task.started, &task.shared, &task.listen);
        task.shared.said();
    });
    if spoken.is_err() {
        // Nothing will be said: whoever ends the task must not wait for it.
        shared.said();
    }
}

struct DelayedTask {
    shared: Arc<Shared>,
    tell: Option<mpsc::Sender<Message>>,
}

impl Progress for Delayed {
    fn begin(&self, what: String) -> Box<dyn Task> {
        Box::new(self.start(what))
    }

    fn prepare(&self) {
        prepare();
    }
}

impl Delayed {
    fn start(&self, what: String) -> DelayedTask {
        let shared = Arc::new(Shared {
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            bar: std::sync::Mutex::new(None),
            speech: std::sync::Mutex::new(Speech::Waiting),
            said: std::sync::Condvar::new(),
        });
        let (tell, listen) = mpsc::channel();
        let started = Instant::now();
        let due = started + self.delay;
        // Held before anything is asked to look: a looker that stops meanwhile then sees it and hands it over.
        WAITING.hold(Unshown { style: self.style, what, started, due, shared: shared.clone(), listen });
        if !prepare() {
            // Nothing will look (no thread could be started): the work is never shown, and goes on regardless; it is
            // not left held either.
            *shared.speech() = Speech::Over;
            WAITING.held().unshown.retain(|task| !Arc::ptr_eq(&task.shared, &shared));
        }
        DelayedTask { shared, tell: Some(tell) }
    }
}

impl Task for DelayedTask {
    fn position(&self, done: u64, total: u64) {
        self.shared.total.store(total, Ordering::Relaxed);
        self.shared.done.store(done, Ordering::Relaxed);
    }

    fn suspend(&self, print: &mut dyn FnMut()) {
        let bar = self.shared.bar();
        match bar.as_ref() {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    fn finish(mut self: Box<Self>, said: Option<String>) {
        self.end(Some(Message::Finish(said)));
    }
}

impl DelayedTask {
    /// Tells the speaker the work is over. If it is being shown, waits for its last line, so that it comes before
    /// whatever the caller prints next; if not, it never will be (a cached load wakes no thread).
    fn end(&mut self, message: Option<Message>) {
        let speaking = {
            let mut speech = self.shared.speech();
            if *speech == Speech::Waiting {
                *speech = Speech::Over;
            }
            *speech == Speech::Speaking
        };
        if let Some(tell) = self.tell.take()
            && let Some(message) = message
            && speaking
        {
            drop(tell.send(message));
        }
        if speaking {
            let mut speech = self.shared.speech();
            while *speech == Speech::Speaking {
                speech = self.shared.said.wait(speech).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
    }
}

impl Drop for DelayedTask {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// The speaking thread of work whose delay has passed (begun at `started`): the work until it ends.
fn speak(style: Style, what: &str, started: Instant, shared: &Shared, listen: &mpsc::Receiver<Message>) {
    let position = || {
        let total = shared.total.load(Ordering::Relaxed);
        (total > 0).then(|| (shared.done.load(Ordering::Relaxed).min(total), total))
    };
    let bar = (style == Style::Terminal).then(|| terminal_bar(what, started));
    *shared.bar() = bar.clone();
    let mut shown_total = 0;
    let say = |line: &str| match style {
        Style::Log => tracing::info!("{line}"),
        _ => eprintln!("toka-host: {line}"),
    };
    match (style, position()) {
        (Style::Terminal, _) => {}
        (_, Some((done, total))) => say(&format!("{what}: {done} of {total}")),
        (_, None) => say(&format!("{what} ...")),
    }
    let mut last_line = Instant::now();
    let tick = if style == Style::Terminal { Duration::from_millis(100) } else { Duration::from_millis(250) };
    let said = loop {
        match listen.recv_timeout(tick) {
            Ok(Message::Finish(said)) => break said,
            Err(RecvTimeoutError::Disconnected) => break None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        match (&bar, position()) {
            (Some(bar), Some((done, total))) => {
                if shown_total != total {
                    bar.set_style(bar_style());
                    shown_total = total;
                }
                bar.set_length(total);
                bar.set_position(done);
            }
            (None, Some((done, total))) if last_line.elapsed() >= PLAIN_EVERY => {
                say(&format!("{what}: {done} of {total}"));
                last_line = Instant::now();
            }
            _ => {}
        }
    };
    if let Some(bar) = shared.bar().take() {
        bar.finish_and_clear();
    }
    if let Some(said) = said {
        say(&said);
    }
}

fn terminal_bar(what: &str, started: Instant) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} toka-host: {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    // The elapsed time counts from the start of the work, not from when it was first shown.
    bar.reset_elapsed();
    let shown_late = started.elapsed();
    bar.set_elapsed(shown_late);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("toka-host: {msg} [{bar:30}] {pos}/{len} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `17.9 MiB`, for what a line says about a size.
pub fn size(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes >= 1 << 20 { format!("{:.1} MiB", bytes as f64 / MIB) } else { format!("{} KiB", bytes.div_ceil(1024)) }
}

/// `12.3 s`, for what a line says about a duration.
pub fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_seconds_read_well() {
        assert_eq!(size(18 << 20), "18.0 MiB");
        assert_eq!(size(1500), "2 KiB");
        assert_eq!(seconds(Duration::from_millis(12_345)), "12.3 s");
    }

    #[test]
    fn short_work_is_never_shown_and_finishing_returns_promptly() {
        let progress = Delayed { style: Style::Plain, delay: Duration::from_secs(5) };
        let started = Instant::now();
        let task = progress.begin("quick".into());
        task.position(1, 2);
        task.finish(Some("done".into()));
        // Finishing waits for nothing: the task was never shown.
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        let task = progress.start("quick".into());
        let shared = task.shared.clone();
        drop(task);
        assert_eq!(*shared.speech(), Speech::Over);
    }

    #[test]
    fn work_that_outlasts_its_delay_is_shown_until_it_ends() {
        // Log records go nowhere without a subscriber; the speech is what is checked.
        let progress = Delayed { style: Style::Log, delay: LOOK_EVERY + Duration::from_millis(50) };
        let quick = progress.start("quick".into());
        let long = progress.start("long".into());
        let (quick_shared, long_shared) = (quick.shared.clone(), long.shared.clone());
        Box::new(quick).finish(None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while *long_shared.speech() == Speech::Waiting && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*long_shared.speech(), Speech::Speaking);
        assert_eq!(*quick_shared.speech(), Speech::Over);
        // Finishing waits for the last line.
        Box::new(long).finish(Some("done".into()));
        assert_eq!(*long_shared.speech(), Speech::Said);
    }

    #[test]
    fn the_waiting_thread_parks_when_idle_and_a_new_task_wakes_it() {
        // Whatever the other tests began has ended: the thread parks once it has had nothing to wait for. Started
        // here whether or not an engine's ticker looks after tasks meanwhile (other tests start engines).
        assert!(start_waiting());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !WAITING.held().parked && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(WAITING.held().parked, "the waiting thread never parked");
        let progress = Delayed { style: Style::Log, delay: LOOK_EVERY + Duration::from_millis(50) };
        let task = progress.start("after a while".into());
        let shared = task.shared.clone();
        assert!(!WAITING.held().parked, "beginning a task wakes the parked thread");
        while *shared.speech() == Speech::Waiting && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*shared.speech(), Speech::Speaking);
        Box::new(task).finish(None);
        assert_eq!(*shared.speech(), Speech::Said);
    }
}
