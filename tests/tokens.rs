//! Personal API tokens, tested as the attacker and as the user: made with `occ-init token`
//! and on the tokens page, accepted as Bearer and as the Basic password of their user only,
//! refused when wrong, revoked, expired, locked or removed with their account (a user of the
//! same name added later does not get them back), rate-limited, never stored or logged in
//! the clear. The real occ-init as PID 1 of a users sandbox, real PAM, the proxy as its own
//! user (opencode here is the fake one: the door is what is tested; tests/clients.rs drives
//! the real opencode's TUI and SDK with a token).

mod support;

use std::time::Duration;

use support::front::booted;
use support::http::{basic, http};
use support::sandbox::{text, Sandbox};
use support::{eventually, Init, CHILD};

fn fake() -> String {
    format!("['{CHILD}', 'fake-opencode', '--behavior', 'healthy']")
}

/// `occ-init token create USER --name NAME [ARGS]`: the token (stdout), or the failure.
fn create(sb: &Sandbox, init: &Init, user: &str, name: &str, args: &[&str]) -> String {
    let mut all = vec!["token", "create", user, "--name", name];
    all.extend_from_slice(args);
    let out = sb.exec(init, &all, None);
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(token.starts_with("occ_"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown once"));
    token
}

/// POST the login form as `user` with `pw`, from the proxy's own origin.
fn form_login(port: u16, user: &str, pw: &str) -> support::http::Resp {
    http(
        port,
        "POST",
        "/_occ/login",
        &format!(
            "Content-Type: application/x-www-form-urlencoded\r\nOrigin: http://127.0.0.1:{port}\r\n"
        ),
        &format!("username={user}&password={}&next=%2F", pw.replace(' ', "+")),
    )
}

/// The session token a successful login (303) set.
fn session_of(r: &support::http::Resp) -> String {
    assert_eq!(r.status, 303, "{r:?}");
    r.head
        .split("occ_session=")
        .nth(1)
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string()
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\nAccept: application/json\r\n")
}

/// Until `port` answers `GET /x` with `headers` by `want` (within 5 s).
fn becomes(port: u16, headers: &str, want: u16) -> bool {
    eventually(Duration::from_secs(5), || {
        http(port, "GET", "/x", headers, "").status == want
    })
}

/// A token is alice's second credential: Bearer and her Basic password, nobody else's; it
/// is kept only as a hash in a root-only file; wrong tokens are refused and rate-limited;
/// a lock suspends it, a revoke and its expiry end it within seconds, and removing alice
/// ends it for good (alice added again does not get it back). It never appears in the log
/// or any process's argv.
#[test]
fn a_token_is_its_users_second_credential_and_ends_with_her_account() {
    let (sb, mut init, port) = booted(
        &fake(),
        "",
        &[("alice", "alice token pw 1"), ("bob", "bob token pw 2")],
    );
    let token = create(&sb, &init, "alice", "ci job", &[]);
    assert_eq!(http(port, "GET", "/x", &bearer(&token), "").status, 200);
    assert_eq!(
        http(port, "GET", "/x", &basic("alice", &token), "").status,
        200
    );
    // Not bob's password, not anyone's without the user it belongs to.
    assert_eq!(
        http(port, "GET", "/x", &basic("bob", &token), "").status,
        401
    );
    // Nor a token one character off, nor the token without its prefix.
    let mut off = token.clone();
    let last = off.pop().unwrap();
    off.push(if last == 'x' { 'y' } else { 'x' });
    assert_eq!(http(port, "GET", "/x", &bearer(&off), "").status, 401);
    assert_eq!(
        http(port, "GET", "/x", &bearer(&token[4..]), "").status,
        401
    );

    // Listed without the secret; stored only as a hash, root-only.
    let out = sb.exec(&init, &["token", "list", "alice"], None);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains("ci job") && !listed.contains(&token),
        "{listed}"
    );
    let out = sb.exec(&init, &["token", "list", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["tokens"][0]["id"].as_str().unwrap().to_string();
    assert!(token.contains(&id));
    let file = sb.manifest().with_file_name("tokens.json");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&token) && !stored.contains(&token[token.len() - 20..]));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let st = support::front::status_json(&sb, &init);
    assert_eq!(st["security"]["tokens"], 1, "{st}");

    // A lock suspends it; an unlock brings it back.
    assert!(sb
        .exec(&init, &["user", "lock", "alice"], None)
        .status
        .success());
    assert!(
        becomes(port, &bearer(&token), 401),
        "a locked user's token works"
    );
    assert_eq!(
        http(port, "GET", "/x", &basic("alice", &token), "").status,
        401
    );
    assert!(sb
        .exec(&init, &["user", "unlock", "alice"], None)
        .status
        .success());
    assert!(becomes(port, &bearer(&token), 200));

    // Revoked: gone within seconds, for both ways of presenting it.
    let out = sb.exec(&init, &["token", "revoke", &id], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(becomes(port, &bearer(&token), 401), "a revoked token works");
    assert!(becomes(port, &basic("alice", &token), 401));

    // Expired.
    let short = create(&sb, &init, "alice", "short", &["--expires", "2s"]);
    assert_eq!(http(port, "GET", "/x", &bearer(&short), "").status, 200);
    assert!(
        becomes(port, &bearer(&short), 401),
        "an expired token works"
    );

    // Removed with the account; the same name added again does not get it back.
    let kept = create(&sb, &init, "alice", "laptop", &["--expires", "never"]);
    assert_eq!(http(port, "GET", "/x", &bearer(&kept), "").status, 200);
    assert!(sb
        .exec(&init, &["user", "remove", "alice"], None)
        .status
        .success());
    assert!(becomes(port, &bearer(&kept), 401));
    support::front::add_user(&sb, &init, "alice", "alice token pw 3");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(http(port, "GET", "/x", &bearer(&kept), "").status, 401);
    assert_eq!(
        http(port, "GET", "/x", &basic("alice", &kept), "").status,
        401
    );
    let out = sb.exec(&init, &["token", "list", "alice"], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no tokens"),
        "{}",
        text(&out)
    );

    // Bad input changes nothing and says why.
    for (args, why) in [
        (
            vec!["token", "create", "nobody", "--name", "x"],
            "not a user who can log in",
        ),
        (vec!["token", "create", "bob", "--name", ""], "printable"),
        (
            vec!["token", "create", "bob", "--name", "x", "--expires", "soon"],
            "not a duration",
        ),
        (vec!["token", "revoke", "0123456789ab"], "no token"),
        (vec!["token", "revoke", "../x"], "not a token id"),
    ] {
        let out = sb.exec(&init, &args, None);
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out).contains(why), "{args:?}: {}", text(&out));
    }

    // Guessing tokens is rate-limited like guessing passwords.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let guess = format!("occ_{:012x}_{}", i, "A".repeat(43));
        statuses.push(http(port, "GET", "/x", &bearer(&guess), "").status);
    }
    assert!(
        statuses.contains(&429),
        "no rate limit on guessed tokens: {statuses:?}"
    );

    // Never in the clear in the log or any process's argv.
    let log = init.stderr_text();
    for t in [&token, &short, &kept] {
        assert!(!log.contains(t.as_str()), "a token in the log");
        let secret = &t[t.len() - 20..];
        assert!(!log.contains(secret));
        for (p, _) in occ_init::init::procs::process_table() {
            for f in ["cmdline", "environ"] {
                let b = std::fs::read(format!("/proc/{p}/{f}")).unwrap_or_default();
                assert!(
                    !String::from_utf8_lossy(&b).contains(secret),
                    "a token in the {f} of {p}"
                );
            }
        }
    }
    drop(init);
    sb.assert_host_untouched();
}

/// The tokens page: a signed-in browser (session cookie) lists, creates (shown once) and
/// revokes its own tokens; the token it made works; a token cannot manage tokens (a leaked
/// one must not mint more); another origin's page cannot create one; bob never sees or
/// revokes alice's.
#[test]
fn the_tokens_page_belongs_to_the_signed_in_user() {
    let (sb, init, port) = booted(
        &fake(),
        "",
        &[("alice", "alice page pw 1"), ("bob", "bob page pw 2")],
    );
    let own = format!("Origin: http://127.0.0.1:{port}\r\n");
    let form = |body: &str, cookie: &str, origin: &str| {
        http(
            port,
            "POST",
            "/_occ/tokens",
            &format!("Cookie: occ_session={cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\n{origin}"),
            body,
        )
    };
    let alice = session_of(&form_login(port, "alice", "alice page pw 1"));
    let bob = session_of(&form_login(port, "bob", "bob page pw 2"));
    // Not signed in: sent to the login page.
    let r = http(port, "GET", "/_occ/tokens", "Accept: text/html\r\n", "");
    assert_eq!(r.status, 303, "{r:?}");
    let r = http(
        port,
        "GET",
        "/_occ/tokens",
        &format!("Cookie: occ_session={alice}\r\n"),
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("No tokens yet"), "{}", r.body);

    let r = form("action=create&name=my+laptop&expires=30d", &alice, &own);
    assert_eq!(r.status, 200, "{r:?}");
    let token = r
        .body
        .split("<code id=\"token\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap_or_else(|| panic!("no token shown: {}", r.body))
        .to_string();
    assert!(token.starts_with("occ_"));
    assert_eq!(http(port, "GET", "/x", &bearer(&token), "").status, 200);
    // Shown once: the next visit lists it without the secret.
    let r = http(
        port,
        "GET",
        "/_occ/tokens",
        &format!("Cookie: occ_session={alice}\r\n"),
        "",
    );
    assert!(
        r.body.contains("my laptop") && !r.body.contains(&token),
        "{}",
        r.body
    );
    let id = token[4..16].to_string();

    // A token cannot manage tokens.
    let r = http(port, "GET", "/_occ/tokens", &bearer(&token), "");
    assert_eq!(r.status, 403, "{r:?}");
    let r = http(port, "GET", "/_occ/tokens", &basic("alice", &token), "");
    assert_eq!(r.status, 403, "{r:?}");
    // Another origin's page cannot make one with alice's cookie.
    let r = form(
        "action=create&name=evil",
        &alice,
        "Origin: http://localhost:1\r\n",
    );
    assert_eq!(r.status, 403, "{r:?}");
    // bob sees none of alice's and cannot revoke hers.
    let r = http(
        port,
        "GET",
        "/_occ/tokens",
        &format!("Cookie: occ_session={bob}\r\n"),
        "",
    );
    assert!(!r.body.contains("my laptop"), "{}", r.body);
    let r = form(&format!("action=revoke&id={id}"), &bob, &own);
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(http(port, "GET", "/x", &bearer(&token), "").status, 200);
    // alice revokes it.
    let r = form(&format!("action=revoke&id={id}"), &alice, &own);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(becomes(port, &bearer(&token), 401));
    drop(init);
    sb.assert_host_untouched();
}

/// The red team's findings stay fixed: a token opens no browser session (it would outlive
/// its revocation and could mint tokens); guessing at one token's id stays limited however
/// often the guesser uses a valid token of his own; a token typed as the user name is not
/// logged; the tokens page takes at most 20 changes a minute.
#[test]
fn tokens_open_no_sessions_and_guessing_stays_limited() {
    let (sb, mut init, port) = booted(
        &fake(),
        "",
        &[("alice", "alice rt pw 1"), ("bob", "bob rt pw 2")],
    );
    let alice_token = create(&sb, &init, "alice", "ci", &[]);
    let bob_token = create(&sb, &init, "bob", "mine", &[]);
    let own = format!("Origin: http://127.0.0.1:{port}\r\n");
    let r = form_login(port, "bob", &bob_token);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(!r.head.to_ascii_lowercase().contains("set-cookie"), "{r:?}");
    assert!(r.body.contains("personal API token"), "{}", r.body);

    // Guesses at alice's token id, with bob's valid token used in between.
    let id = &alice_token[4..16];
    let mut statuses = Vec::new();
    for i in 0..12 {
        let guess = format!("occ_{id}_{}{:02}", "B".repeat(41), i);
        statuses.push(http(port, "GET", "/x", &bearer(&guess), "").status);
        if i % 3 == 2 {
            std::thread::sleep(Duration::from_millis(1100));
            let _ = http(port, "GET", "/x", &bearer(&bob_token), "");
        }
    }
    // Five tries, then the limiter's delays (1 s, then 5 s, …) let at most one more through.
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        checked <= 6 && statuses[10..].iter().all(|s| *s == 429),
        "guessing reset by a valid token of one's own: {statuses:?}"
    );
    // alice's own token still works from here (her address is the guesser's, but the pair
    // alice-token@address is known once she used it... she has not yet: it waits out the
    // limit). bob's token, used here before, is not locked out by the guesses.
    assert_eq!(http(port, "GET", "/x", &bearer(&bob_token), "").status, 200);

    // A token in the user name field is not logged.
    // (401, or 429 now that this address guessed so much: either way logged.)
    let r = http(port, "GET", "/x", &basic(&bob_token, "x"), "");
    assert!(matches!(r.status, 401 | 429), "{r:?}");
    std::thread::sleep(Duration::from_millis(3500));
    let log = init.stderr_text();
    assert!(!log.contains(&bob_token[16..]), "a token in the log");
    assert!(log.contains("<not a user name>"), "{log}");

    // The tokens page: at most 20 changes a minute.
    let cookie = session_of(&form_login(port, "bob", "bob rt pw 2"));
    let mut codes = Vec::new();
    for _ in 0..22 {
        codes.push(
            http(
                port,
                "POST",
                "/_occ/tokens",
                &format!("Cookie: occ_session={cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\n{own}"),
                "action=revoke&id=000000000000",
            )
            .status,
        );
    }
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 2, "{codes:?}");
    drop(init);
    sb.assert_host_untouched();
}
