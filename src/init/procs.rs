//! The process tree below PID 1, read from /proc: finding and signalling every descendant,
//! including those that escaped the child's process group with `setsid`.

/// Parent pid from the text of `/proc/PID/stat` (the comm field may contain spaces and `)`).
pub fn parse_ppid(stat: &str) -> Option<i32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// Process state letter (`R`, `S`, `Z`, …) from the text of `/proc/PID/stat`.
pub fn parse_state(stat: &str) -> Option<char> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().next()?.chars().next()
}

/// All transitive descendants of `root` in a `(pid, ppid)` table.
pub fn descendants(table: &[(i32, i32)], root: i32) -> Vec<i32> {
    let mut children: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    for &(pid, ppid) in table {
        children.entry(ppid).or_default().push(pid);
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(parent) = queue.pop() {
        for &pid in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            if pid != root {
                found.push(pid);
                queue.push(pid);
            }
        }
    }
    found
}

/// `(pid, ppid)` of every process visible in /proc. Processes that vanish while it is read
/// are skipped.
pub fn process_table() -> Vec<(i32, i32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        Some((pid, parse_ppid(&stat)?))
    })
    .collect()
}

/// Send `sig` to every descendant of this process; returns how many were signalled.
///
/// As PID 1 of a namespace, `kill(-1)` reaches every other process in it, however it was
/// started. As a subreaper (PID ≠ 1) `kill(-1)` would hit the whole host, so the tree is
/// walked instead; processes that fork meanwhile are caught on the next round.
pub fn signal_descendants(sig: super::signals::Sig) -> usize {
    let me = std::process::id() as i32;
    // SAFETY (both kills): plain system calls with integer arguments.
    if me == 1 {
        return usize::from(unsafe { libc::kill(-1, sig) } == 0);
    }
    let mut signalled = 0;
    for pid in descendants(&process_table(), me) {
        if unsafe { libc::kill(pid, sig) } == 0 {
            signalled += 1;
        }
    }
    signalled
}

/// The real, effective and saved uids from the text of `/proc/PID/status`.
pub fn parse_uids(status: &str) -> Option<[u32; 3]> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let mut f = line["Uid:".len()..]
        .split_whitespace()
        .map(str::parse::<u32>);
    Some([f.next()?.ok()?, f.next()?.ok()?, f.next()?.ok()?])
}

/// Kill (SIGKILL) every process that runs as `uid`, atomically with respect to fork: a
/// child forked as that uid sends `kill(-1, SIGKILL)` — the kernel signals every process
/// the caller may signal (real or saved uid `uid`), in one pass under its task list lock,
/// and a fork that races it fails — until none is left (ESRCH). A walk over /proc would
/// miss a chain of processes that fork and exit faster than it reads. Only processes in
/// PID 1's PID namespace (the container) are reached. Returns how many passes signalled
/// someone (a zombie not yet reaped counts too).
pub fn kill_uid(uid: u32) -> Result<u32, String> {
    if uid == 0 {
        return Err("refusing to kill uid 0's processes".into());
    }
    // SAFETY: the child only makes async-signal-safe system calls (setgroups, setresgid,
    // setresuid, kill, _exit) before it exits; it never returns into Rust code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(65534, 65534, 65534) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                libc::_exit(255);
            }
            let mut passes = 0;
            while passes < 250 && libc::kill(-1, libc::SIGKILL) == 0 {
                passes += 1;
            }
            libc::_exit(passes)
        },
        Ok(nix::unistd::ForkResult::Parent { child }) => loop {
            match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 255)) => {
                    return Err("cannot take on the uid to kill its processes".into())
                }
                Ok(nix::sys::wait::WaitStatus::Exited(_, n)) => return Ok(n as u32),
                Ok(_) => return Ok(0),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.to_string()),
            }
        },
        Err(e) => Err(format!("fork: {e}")),
    }
}

/// Resident memory (KiB) of the processes in process group `pgid` (an opencode and what
/// it runs in its group), from /proc; `None` when none is found.
pub fn group_rss_kib(pgid: i32) -> Option<u64> {
    let dir = std::fs::read_dir("/proc").ok()?;
    let mut total = None;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if parse_pgrp(&stat) != Some(pgid) && pid != pgid {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let kib = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        *total.get_or_insert(0) += kib;
    }
    total
}

/// Process group from the text of `/proc/PID/stat`.
pub fn parse_pgrp(stat: &str) -> Option<i32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_uids_and_group() {
        let status = "Name:\tbash\nUid:\t1001\t1002\t1003\t1001\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_uids(status), Some([1001, 1002, 1003]));
        assert_eq!(parse_uids("Name: x\n"), None);
        assert_eq!(parse_pgrp("12 (a b) c) S 1 77 77 0"), Some(77));
        let me = std::process::id() as i32;
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let pgrp = parse_pgrp(&stat).unwrap();
        assert!(group_rss_kib(pgrp).unwrap() > 0, "{me} in group {pgrp}");
    }

    use super::*;

    #[test]
    fn parses_stat_with_tricky_comm() {
        let stat = "1234 (my) (evil) proc) S 77 1234 1234 0 -1 4194560 0 0";
        assert_eq!(parse_ppid(stat), Some(77));
        assert_eq!(parse_state(stat), Some('S'));
        assert_eq!(parse_ppid("garbage"), None);
        assert_eq!(parse_ppid("1 (x)"), None);
    }

    #[test]
    fn finds_transitive_descendants_only() {
        // 10 ─┬─ 11 ── 13 ── 14
        //     └─ 12
        // 20 (unrelated) ── 21
        let table = [
            (10, 1),
            (11, 10),
            (12, 10),
            (13, 11),
            (14, 13),
            (20, 1),
            (21, 20),
        ];
        let mut d = descendants(&table, 10);
        d.sort();
        assert_eq!(d, vec![11, 12, 13, 14]);
        assert!(descendants(&table, 14).is_empty());
    }

    #[test]
    fn reads_this_process_from_proc() {
        let me = std::process::id() as i32;
        let table = process_table();
        let parent = std::os::unix::process::parent_id() as i32;
        assert!(table.contains(&(me, parent)));
    }
}
