//! Terminal behaviour: under `docker run -it` the child owns the terminal's foreground
//! process group, so Ctrl-C goes to it (not to PID 1) and job control works.

mod support;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{CHILD, OCC_INIT};

#[test]
fn ctrl_c_reaches_the_child_through_a_pty() {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave: OwnedFd = pty.slave;
    let slave_fd = slave.as_raw_fd();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", OCC_INIT])
        .args(["run", "--", CHILD, "trap-int", "42"])
        .env("OCC_LOG", "info")
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and ioctl are async-signal-safe; they make the pty our terminal.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let _ = slave_fd;
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn");
    let mut master = std::fs::File::from(pty.master);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = master.try_clone().expect("clone master");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut output = String::new();
    while !output.contains("ready") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => output.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => {
                let _ = child.kill();
                panic!("child never got ready: {output:?}");
            }
        }
    }
    // The child owns the terminal.
    let fg_line = output
        .lines()
        .find(|l| l.contains("foreground="))
        .expect("foreground line")
        .trim()
        .to_string();
    let parts: Vec<&str> = fg_line.split([' ', '=']).collect();
    assert_eq!(
        parts[1], parts[3],
        "child is not the foreground group: {fg_line}"
    );

    master.write_all(&[0x03]).expect("write ^C");
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no exit after ^C");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    while let Ok(bytes) = rx.recv_timeout(Duration::from_millis(200)) {
        output.push_str(&String::from_utf8_lossy(&bytes));
    }
    assert_eq!(status.code(), Some(42), "output: {output}");
    // Ctrl-C went to the child's group only: PID 1 never saw SIGINT.
    assert!(!output.contains("received SIGINT"), "output: {output}");
}
