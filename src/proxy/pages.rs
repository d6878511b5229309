//! The proxy's own pages: the login form and the gate page (HTML for browsers, JSON for the
//! rest). Every value put into HTML is escaped.

/// Escape text for HTML element content and quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;\
background:#0f1115;color:#e6e6e6;font:15px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif}\
main{width:min(92vw,360px);background:#181b22;border:1px solid #2a2f3a;border-radius:10px;padding:28px}\
h1{font-size:20px;margin:0 0 4px}p{margin:0 0 18px;color:#9aa3b2}\
label{display:block;font-size:13px;margin:12px 0 4px;color:#c5cbd6}\
input{box-sizing:border-box;width:100%;padding:9px 10px;border-radius:6px;border:1px solid #394050;\
background:#0f1115;color:#e6e6e6;font-size:15px}input:focus{outline:2px solid #4c8dff;border-color:transparent}\
button{margin-top:20px;width:100%;padding:10px;border:0;border-radius:6px;background:#4c8dff;color:#fff;\
font-size:15px;cursor:pointer}.err{background:#3a1d22;border:1px solid #6b2a35;color:#ffb4bf;\
padding:8px 10px;border-radius:6px;margin:0 0 8px;font-size:14px}code{background:#0f1115;padding:2px 5px;\
border-radius:4px;font-size:13px;word-break:break-all}\
a.sso{display:block;text-align:center;padding:10px;border-radius:6px;background:#2a2f3a;color:#fff;\
text-decoration:none;border:1px solid #394050}";

/// Single sign-on on the login page: the button's label, whether the provider answers, and
/// whether the password form is shown at all.
pub struct Sso<'a> {
    pub name: &'a str,
    pub available: bool,
    pub passwords: bool,
}

/// The login form. `error` is shown above it (already generic; escaped here); `no_users`
/// adds how to create the first account.
pub fn login(next: &str, error: Option<&str>, no_users: bool) -> String {
    login_sso(next, error, no_users, None)
}

/// The login form, with a "Sign in with …" button when `sso` is given.
pub fn login_sso(next: &str, error: Option<&str>, no_users: bool, sso: Option<&Sso<'_>>) -> String {
    let button = match sso {
        Some(s) if s.available => format!(
            "<p><a class=\"sso\" id=\"sso\" href=\"/_occ/oidc/login?next={}\">Sign in with {}</a></p>",
            escape(&super::request::percent_encode(next)),
            escape(s.name)
        ),
        Some(s) => format!(
            "<p class=\"err\" id=\"sso-down\">{} cannot be reached right now{}.</p>",
            escape(s.name),
            if s.passwords { "; sign in with your password" } else { "; try again shortly" }
        ),
        None => String::new(),
    };
    let passwords = sso.is_none_or(|s| s.passwords);
    let form = if passwords {
        format!(
            "<form method=\"post\" action=\"/_occ/login\">\
<input type=\"hidden\" name=\"next\" value=\"{next}\">\
<label for=\"username\">Username</label>\
<input id=\"username\" name=\"username\" autocomplete=\"username\" autocapitalize=\"none\" required autofocus>\
<label for=\"password\">Password</label>\
<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\">Sign in</button></form>",
            next = escape(next)
        )
    } else {
        String::new()
    };
    login_page(error, no_users, &format!("{button}{form}"))
}

fn login_page(error: Option<&str>, no_users: bool, body: &str) -> String {
    let mut err = error
        .map(|e| format!("<div class=\"err\" role=\"alert\">{}</div>", escape(e)))
        .unwrap_or_default();
    if no_users {
        err.push_str(&format!(
            "<p>No user exists yet. Add one on the host:</p><p><code>{}</code></p>",
            escape(GATE_HOWTO)
        ));
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>Sign in · opencode</title><style>{STYLE}</style></head><body><main>\
<h1>Sign in to opencode</h1><p>Use your account on this container.</p>{err}{body}\
</main></body></html>"
    )
}

/// Single sign-on did not work: why, and the way back to the login page.
pub fn sso_failed(message: &str) -> String {
    login_page(
        Some(message),
        false,
        "<p><a class=\"sso\" href=\"/_occ/login\">Back to sign-in</a></p>",
    )
}

/// Signed in by single sign-on: a page of this site that goes on to `next` (so the
/// `SameSite=Strict` session cookie it sets is sent with that navigation).
pub fn signed_in(user: &str, next: &str) -> String {
    let next = escape(next);
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"0;url={next}\"><title>Signed in · opencode</title>\
<style>{STYLE}</style></head><body><main><h1>Signed in as {}</h1>\
<p><a class=\"sso\" href=\"{next}\">Continue to opencode</a></p></main></body></html>",
        escape(user)
    )
}

/// The signed-in user's tokens page: the list (id, name, dates), a form to make one and a
/// button to revoke each; `fresh` is a token just made, shown this once.
pub fn tokens(
    user: &str,
    list: &[crate::tokens::TokenInfo],
    fresh: Option<&str>,
    error: Option<&str>,
) -> String {
    let date = |t: Option<i64>| {
        t.map_or("—".to_string(), |t| {
            crate::tls::rfc3339(t)[..16].replace('T', " ")
        })
    };
    let mut rows = String::new();
    for t in list {
        let expires = match (t.expires, t.expired) {
            (None, _) => "never".to_string(),
            (e, true) => format!("{} (expired)", date(e)),
            (e, false) => date(e),
        };
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><form method=\"post\" action=\"/_occ/tokens\"><input type=\"hidden\" name=\"action\" value=\"revoke\"><input type=\"hidden\" name=\"id\" value=\"{}\"><button class=\"small\" type=\"submit\">Revoke</button></form></td></tr>",
            escape(&t.id),
            escape(&t.name),
            date(Some(t.created)),
            date(t.last_used),
            escape(&expires),
            escape(&t.id),
        ));
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=\"6\">No tokens yet.</td></tr>".into();
    }
    let fresh = fresh
        .map(|t| {
            format!(
                "<div class=\"new\" role=\"status\"><p>Your new token, shown once: copy it now.</p><p><code id=\"token\">{}</code></p><p>Use it as <code>Authorization: Bearer …</code> or as your password: <code>opencode attach URL -u {} -p TOKEN</code></p></div>",
                escape(t),
                escape(user)
            )
        })
        .unwrap_or_default();
    let err = error
        .map(|e| format!("<div class=\"err\" role=\"alert\">{}</div>", escape(e)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>API tokens · opencode</title><style>{STYLE}main{{width:min(94vw,860px)}}table{{width:100%;border-collapse:collapse;margin:8px 0 18px;font-size:14px}}td,th{{text-align:left;padding:6px;border-bottom:1px solid #2a2f3a}}button.small{{margin:0;width:auto;padding:4px 10px;font-size:13px}}.new{{background:#16301f;border:1px solid #2f6b3f;padding:8px 12px;border-radius:6px;margin:0 0 12px}}.row{{display:flex;gap:8px}}.row>*{{flex:1}}</style></head><body><main><h1>Personal API tokens</h1><p>Signed in as {user}. A token works like your password for opencode's TUI, the SDK and scripts, and can be revoked on its own.</p>{err}{fresh}<table><thead><tr><th>ID</th><th>Name</th><th>Created</th><th>Last used</th><th>Expires</th><th></th></tr></thead><tbody>{rows}</tbody></table><form method=\"post\" action=\"/_occ/tokens\"><input type=\"hidden\" name=\"action\" value=\"create\"><div class=\"row\"><div><label for=\"name\">Name</label><input id=\"name\" name=\"name\" maxlength=\"64\" required placeholder=\"laptop TUI\"></div><div><label for=\"expires\">Expires after</label><input id=\"expires\" name=\"expires\" value=\"90d\"></div></div><button type=\"submit\">Create token</button></form></main></body></html>",
        user = escape(user),
    )
}

/// What to tell someone while opencode is gated.
pub const GATE_HOWTO: &str = "docker exec -it <container> occ-init user add NAME";

/// The gate page (503) for browsers.
pub fn gate_html(reason: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>opencode is waiting for its first user</title><style>{STYLE}</style></head><body><main>\
<h1>opencode is not started yet</h1><p>{reason}</p>\
<p>Add the first user on the host, then reload this page:</p><p><code>{howto}</code></p>\
</main></body></html>",
        reason = escape(reason),
        howto = escape(GATE_HOWTO),
    )
}

/// The gate answer (503) for API clients.
pub fn gate_json(reason: &str) -> String {
    serde_json::json!({
        "healthy": false,
        "error": "gated",
        "message": reason,
        "fix": GATE_HOWTO,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_it_shows() {
        let page = login("/\"><script>x</script>", Some("<b>bad</b>"), false);
        assert!(!page.contains("No user exists yet"));
        assert!(login("/", None, true).contains("occ-init user add NAME"));
        assert!(!page.contains("<script>x"));
        assert!(!page.contains("<b>bad"));
        assert!(page.contains("name=\"username\"") && page.contains("name=\"password\""));
        let gate = gate_html("no <users>");
        assert!(gate.contains("no &lt;users&gt;"));
        assert!(gate.contains("occ-init user add NAME"));
        let j: serde_json::Value = serde_json::from_str(&gate_json("why")).unwrap();
        assert_eq!(j["healthy"], false);
        assert_eq!(j["error"], "gated");
    }
}
