//! `occ-test-child`: the fault-injection child that integration tests and benchmarks run
//! under occ-init — exit codes, signal state, orphans and SIGCHLD storms, signal echo.
//! Not part of the product image.

use std::io::Write;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{fork, ForkResult};

fn usage() -> ! {
    eprintln!(
        "usage: occ-test-child MODE [ARGS]\n\
         modes: exit N | raise SIG | sleep SECS | ignore-term | trap-int CODE |\n\
         report-signals [--fork] | orphans N [ROUNDS] | setsid-grandchild | echo-signals FIFO |\n\
         touch FIFO | tty |\n\
         fake-opencode [--behavior healthy|crash|html|slow] [--starts FILE] --hostname H --port P |\n\
         admin-load SOCKET CLIENTS REQUESTS_PER_CLIENT"
    );
    std::process::exit(64)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn arg(args: &[String], i: usize) -> &str {
    args.get(i).map(String::as_str).unwrap_or_else(|| usage())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match arg(&args, 1) {
        "exit" => std::process::exit(arg(&args, 2).parse().unwrap_or_else(|_| usage())),
        "raise" => {
            let sig: Signal = arg(&args, 2).parse().unwrap_or_else(|_| usage());
            // Rust's runtime handles SIGSEGV/SIGBUS itself; die of the signal instead.
            // SAFETY: SIG_DFL installs no handler code.
            let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
            let _ = signal::raise(sig);
            forever()
        }
        "sleep" => {
            say("ready");
            let secs: u64 = arg(&args, 2).parse().unwrap_or_else(|_| usage());
            std::thread::sleep(Duration::from_secs(secs));
        }
        "ignore-term" => {
            // SAFETY: SIG_IGN installs no handler code.
            let _ = unsafe { signal::signal(Signal::SIGTERM, SigHandler::SigIgn) };
            say("ready");
            forever()
        }
        "trap-int" => trap_int(arg(&args, 2).parse().unwrap_or_else(|_| usage())),
        "report-signals" => report_signals(args.get(2).map(String::as_str) == Some("--fork")),
        "orphans" => {
            let n: usize = arg(&args, 2).parse().unwrap_or_else(|_| usage());
            let rounds: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(1);
            std::process::exit(orphans(n, rounds))
        }
        "setsid-grandchild" => setsid_grandchild(),
        "echo-signals" => echo_signals(arg(&args, 2)),
        "touch" => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(arg(&args, 2))
                .unwrap_or_else(|e| {
                    eprintln!("open: {e}");
                    std::process::exit(1)
                });
            let _ = f.write_all(b"x");
        }
        "fake-opencode" => fake_opencode(&args[2..]),
        "admin-load" => admin_load(
            arg(&args, 2),
            arg(&args, 3).parse().unwrap_or_else(|_| usage()),
            arg(&args, 4).parse().unwrap_or_else(|_| usage()),
        ),
        "tty" => {
            // SAFETY: plain queries of our own process and fd 0.
            let (fg, me) = unsafe { (libc::tcgetpgrp(0), libc::getpgrp()) };
            say(&format!("foreground={fg} pgrp={me}"));
        }
        _ => usage(),
    }
}

extern "C" fn exit_on_int(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe. The code travels through an atomic.
    unsafe { libc::_exit(INT_CODE.load(std::sync::atomic::Ordering::Relaxed)) }
}
static INT_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Exit with `code` on SIGINT; print the terminal's foreground group first.
fn trap_int(code: i32) -> ! {
    INT_CODE.store(code, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: the handler only calls _exit.
    let _ = unsafe { signal::signal(Signal::SIGINT, SigHandler::Handler(exit_on_int)) };
    // SAFETY: plain queries of our own process and fd 0.
    let (fg, me) = unsafe { (libc::tcgetpgrp(0), libc::getpgrp()) };
    say(&format!("foreground={fg} pgrp={me}"));
    say("ready");
    forever()
}

/// Print "<who> got SIGX" for every forwardable signal; exit 0 after SIGTERM.
fn report_signals(with_grandchild: bool) -> ! {
    // Every signal a process may block (real-time and fault signals included), as raw
    // numbers: nix's `Signal` cannot express the real-time ones.
    // SAFETY: plain libc signal-set calls on a local set, in a single-threaded program.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut set);
        libc::sigdelset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut who = "child";
    if with_grandchild {
        // SAFETY: single-threaded program; the child only prints and waits for signals.
        if let Ok(ForkResult::Child) = unsafe { fork() } {
            who = "grandchild";
        }
    }
    if who == "child" {
        say("ready");
    }
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait on our own blocked set.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            say(&format!("{who} got {}", occ_init::init::signals::name(sig)));
            if sig == libc::SIGTERM {
                std::process::exit(0);
            }
        }
    }
}

/// Leave `n` orphans that exit all at once (a SIGCHLD storm for PID 1), `rounds` times, then
/// wait until PID 1 has reaped them all. Exit 0 when no zombie is left, 1 otherwise.
fn orphans(n: usize, rounds: usize) -> i32 {
    let init = std::os::unix::process::parent_id() as i32;
    for _ in 0..rounds {
        let (release_r, release_w) = match nix::unistd::pipe() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("pipe: {e}");
                return 2;
            }
        };
        for _ in 0..n {
            // SAFETY: single-threaded program; children only read a pipe and _exit.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    // SAFETY: as above.
                    if let Ok(ForkResult::Child) = unsafe { fork() } {
                        drop(release_w);
                        let mut b = [0u8; 1];
                        let _ = nix::unistd::read(&release_r, &mut b);
                        // SAFETY: _exit is always safe.
                        unsafe { libc::_exit(0) };
                    }
                    // SAFETY: _exit is always safe.
                    unsafe { libc::_exit(0) };
                }
                Ok(ForkResult::Parent { child }) => {
                    let _ = nix::sys::wait::waitpid(child, None);
                }
                Err(e) => {
                    eprintln!("fork: {e}");
                    return 2;
                }
            }
        }
        drop(release_w); // every orphan wakes up and exits now
    }
    let released = Instant::now();
    let deadline = released + Duration::from_secs(60);
    loop {
        let left = children_of(init);
        if left == 0 {
            say(&format!(
                "all reaped in {} us, init cpu {} ms",
                released.elapsed().as_micros(),
                cpu_ms(init)
            ));
            return 0;
        }
        if Instant::now() > deadline {
            say(&format!("{left} processes left under pid {init}"));
            return 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// User + system CPU time of a process in milliseconds, from /proc/PID/stat.
fn cpu_ms(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields after the comm: state is index 0, utime 11, stime 12 (clock ticks).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1000 / hz
}

/// Processes (zombies included) whose parent is `parent`, other than this one.
fn children_of(parent: i32) -> usize {
    let me = std::process::id() as i32;
    occ_init::init::procs::process_table()
        .iter()
        .filter(|&&(pid, ppid)| ppid == parent && pid != me)
        .count()
}

/// A grandchild that leaves the process group (setsid) and ignores TERM; the child itself
/// dies of TERM. Prints "grandchild PID" (as seen from here) and "ready".
fn setsid_grandchild() -> ! {
    let (r, w) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(_) => std::process::exit(2),
    };
    // SAFETY: single-threaded program.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = nix::unistd::setsid();
            // SAFETY: SIG_IGN installs no handler code.
            let _ = unsafe { signal::signal(Signal::SIGTERM, SigHandler::SigIgn) };
            let _ = nix::unistd::write(&w, b"x");
            forever()
        }
        Ok(ForkResult::Parent { child }) => {
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(&r, &mut b);
            say(&format!("grandchild {child}"));
            say("ready");
            forever()
        }
        Err(_) => std::process::exit(2),
    }
}

/// Benchmark helper: write one byte to FIFO for every SIGUSR1; exit on SIGTERM.
fn echo_signals(fifo: &str) -> ! {
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR1);
    set.add(Signal::SIGTERM);
    let _ = signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    let mut out = match std::fs::OpenOptions::new().write(true).open(fifo) {
        Ok(f) => f,
        Err(_) => std::process::exit(1),
    };
    let _ = out.write_all(b"r");
    loop {
        match set.wait() {
            Ok(Signal::SIGUSR1) => {
                let _ = out.write_all(b"s");
            }
            Ok(_) => std::process::exit(0),
            Err(_) => {}
        }
    }
}

/// A stand-in for `opencode serve`: answers GET /global/health with `{"healthy":true}` and
/// every other path with HTML, like opencode. Behaviours: healthy (default), crash (exit 3
/// after 200 ms), html (HTML everywhere, so probes fail), slow (listens after 3 s).
/// `--starts FILE` appends "start PID UID" on every start.
fn fake_opencode(args: &[String]) -> ! {
    use std::io::Read;
    let mut behavior = "healthy".to_string();
    let (mut host, mut port) = (String::new(), 0u16);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--behavior" => behavior = it.next().cloned().unwrap_or_default(),
            "--hostname" => host = it.next().cloned().unwrap_or_default(),
            "--port" => port = it.next().and_then(|p| p.parse().ok()).unwrap_or(0),
            "--starts" => {
                if let Some(f) = it.next() {
                    if let Ok(mut out) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(f)
                    {
                        // SAFETY: getuid has no preconditions.
                        let _ = writeln!(out, "start {} {}", std::process::id(), unsafe {
                            libc::getuid()
                        });
                    }
                }
            }
            _ => {}
        }
    }
    // `--port 0` (as occ-init gives it behind its proxy): a port the kernel picks.
    if !args.iter().any(|a| a == "--port") {
        eprintln!("fake-opencode: no --port given");
        std::process::exit(2);
    }
    match behavior.as_str() {
        "crash" => {
            std::thread::sleep(Duration::from_millis(200));
            eprintln!("fake-opencode: crashing on purpose");
            std::process::exit(3)
        }
        "slow" => std::thread::sleep(Duration::from_secs(3)),
        _ => {}
    }
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let listener = std::net::TcpListener::bind(&addr).unwrap_or_else(|e| {
        eprintln!("Error: Unexpected error ({e})");
        std::process::exit(1)
    });
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        let req = String::from_utf8_lossy(&buf[..n]);
        let path = req.split_whitespace().nth(1).unwrap_or("/");
        let (ctype, body) = if path == "/global/health" && behavior != "html" {
            (
                "application/json",
                "{\"healthy\":true,\"version\":\"fake\"}".to_string(),
            )
        } else {
            (
                "text/html",
                "<!doctype html><html>fake opencode</html>".to_string(),
            )
        };
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    std::process::exit(0)
}

/// Benchmark helper: CLIENTS threads each send REQUESTS `GET /v1/status` over the admin socket,
/// one connection per request; prints "p50_us p99_us errors".
fn admin_load(socket: &str, clients: usize, requests: usize) {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let start = std::sync::Arc::new(std::sync::Barrier::new(clients));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.to_string();
            let start = start.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(requests);
                let mut errors = 0usize;
                start.wait();
                for _ in 0..requests {
                    let t = Instant::now();
                    let ok = UnixStream::connect(&socket)
                        .and_then(|mut s| {
                            s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")?;
                            let mut out = Vec::new();
                            s.read_to_end(&mut out)?;
                            Ok(out.starts_with(b"HTTP/1.1 200"))
                        })
                        .unwrap_or(false);
                    lat.push(t.elapsed().as_micros() as u64);
                    if !ok {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        if let Ok((lat, e)) = h.join() {
            all.extend(lat);
            errors += e;
        }
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    say(&format!("{} {} {errors}", pct(0.5), pct(0.99)));
}
