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

#[cfg(test)]
mod tests {
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
