//! Who may use the CMA's HTTP API, and what the API may make the fleet run.
//!
//! - **Operator token.** At its first start the CMA writes `DATA_DIR/api.token` (64 hex
//!   characters, mode 0600 in the 0700 data directory) and keeps it afterwards; a token file
//!   that group or others can read is refused at start. Whoever can read that file is an
//!   operator: every request that changes state (any method but `GET`/`HEAD`: hand-set checks,
//!   run-now, durable subscriptions and their acks) needs `Authorization: Bearer TOKEN`, on
//!   loopback too. The token configured with `--api-token` (`ASSIM_API_TOKEN`) is accepted as
//!   well; when one is configured, reads need a token too (the API may then face the network).
//!   Both sides are hashed with SHA-256 and compared in constant time (`subtle`).
//! - **Browsers: the web page's sessions.** A browser cannot hold the token (a page's script
//!   could read it), so an operator signs in once at `/login` with the token and gets a random
//!   session id in an `HttpOnly; SameSite=Strict` cookie ([`crate::api_session`]: bounded,
//!   expiring, in memory). A valid session counts as the operator for reads and for the page's
//!   own form posts ("Run now", sign-out), never for the JSON API's writes (`/api/…`: bearer
//!   token only). Every form post to the page — with a session, with a bearer token (a reverse
//!   proxy may add one to every request) or to sign in — must come from the page itself: its
//!   `Origin` (or `Referer`) must name the host it was sent to, else `403` (cross-site request
//!   forgery). A request the guard admits as the operator carries an
//!   [`assim_web::Operator`] extension; the page shows "Run now" only then.
//! - **Host header.** A request is answered only when its `Host` (or HTTP/2 authority) is
//!   `localhost`, a loopback address, the API's own listen address (any IP address when it
//!   listens on a wildcard), or a name given with `--api-host` (`ASSIM_API_HOSTS`). A web page
//!   that rebinds its own DNS name to 127.0.0.1 therefore reaches nothing: DNS rebinding needs a
//!   name, and names are accepted only when the operator listed them.
//! - **Check programs.** A check set through the API may name a Nagios plugin or an LSB script
//!   without a `/` (it runs from the nanoprobe's plugin or init directory) or by an absolute,
//!   normalised path inside one of `check_plugin_dirs` (`--check-plugin-dir`,
//!   `ASSIM_CHECK_PLUGIN_DIRS`); anything else is refused with a 400 that names the setting.
//!   Checks from the CMA's own rule files are the operator's config and are not restricted.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{Context as _, bail};
use assim_store::services::StoredCheck;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::api::ApiState;
use crate::api_session::Sessions;
use assim_web::Operator;

/// The operator token's file inside the CMA's data directory.
pub const TOKEN_FILE: &str = "api.token";

/// Where the `assim` CLI looks for the token by default (the CMA's default data directory).
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/assim/cma/api.token";

/// The directories API-set checks may run programs from, unless configured.
pub const DEFAULT_PLUGIN_DIRS: [&str; 3] =
    ["/usr/lib/nagios/plugins", "/usr/lib64/nagios/plugins", "/etc/init.d"];

/// The access policy of one API.
#[derive(Clone)]
pub struct ApiAccess {
    /// SHA-256 of every accepted token (the file's, and the configured one if any).
    token_hashes: Vec<[u8; 32]>,
    /// A token was configured: reads need a token too.
    reads_need_token: bool,
    /// Where the token file is (named in the 401 answer).
    token_file: PathBuf,
    /// The API's listen address.
    listen: SocketAddr,
    /// Extra host names (lower case) the operator allowed.
    hosts: Vec<String>,
    /// Where API-set checks may run programs from.
    pub(crate) check_plugin_dirs: Vec<PathBuf>,
    /// The web page's signed-in browser sessions ([`crate::api_session`]).
    sessions: Arc<Mutex<Sessions>>,
}

impl std::fmt::Debug for ApiAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAccess")
            .field("tokens", &self.token_hashes.len())
            .field("reads_need_token", &self.reads_need_token)
            .field("token_file", &self.token_file)
            .field("listen", &self.listen)
            .field("hosts", &self.hosts)
            .field("check_plugin_dirs", &self.check_plugin_dirs)
            .finish()
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

impl ApiAccess {
    /// The policy of the CMA with these options: reads (or creates, at the first start) the
    /// token file in its data directory.
    pub fn load(opts: &crate::cma::CmaOptions) -> anyhow::Result<ApiAccess> {
        let token_file = opts.data_dir.join(TOKEN_FILE);
        let token = load_or_create_token(&token_file)?;
        let mut access = ApiAccess::new(
            &token,
            opts.api_token.as_deref(),
            opts.api,
            &opts.api_hosts,
            &opts.check_plugin_dirs,
        );
        access.token_file = token_file;
        Ok(access)
    }

    /// A policy from its parts (`token`: the file's; `configured`: `--api-token`).
    pub fn new(
        token: &str,
        configured: Option<&str>,
        listen: SocketAddr,
        hosts: &[String],
        check_plugin_dirs: &[PathBuf],
    ) -> ApiAccess {
        let mut token_hashes = vec![hash(token)];
        token_hashes.extend(configured.map(hash));
        ApiAccess {
            token_hashes,
            reads_need_token: configured.is_some(),
            token_file: PathBuf::from(TOKEN_FILE),
            listen,
            hosts: hosts.iter().map(|h| normal_host(h)).collect(),
            check_plugin_dirs: check_plugin_dirs.to_vec(),
            sessions: Arc::default(),
        }
    }

    /// Where the operator token is (named on the sign-in page and in refusals).
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// The browser sessions (a short lock: every call is a map lookup).
    pub(crate) fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `token` is an accepted operator token (constant time, like the bearer check).
    pub(crate) fn token_matches(&self, token: &str) -> bool {
        if token.len() > 1024 {
            return false;
        }
        let given = hash(token);
        self.token_hashes.iter().fold(false, |ok, h| ok | bool::from(h.ct_eq(&given)))
    }

    /// Whether the request carries an accepted bearer token.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        // Every candidate is compared, so the time does not say which one matched either.
        self.token_matches(given)
    }

    /// Whether `host` (a `Host` header value or URI authority) names this API.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host);
        if name == "localhost" || self.hosts.contains(&name) {
            return true;
        }
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                ip.is_loopback()
                    || ip == self.listen.ip()
                    || (self.listen.ip().is_unspecified() && !ip.is_unspecified())
            }
            Err(_) => false,
        }
    }

    /// Decides a request: the answer to send instead (`Err`), or whether the caller is an
    /// operator (`Ok(Some(..))`: the bearer token, or a signed-in session where one counts).
    ///
    /// 1. The `Host` must name this API.
    /// 2. Form posts to the page (any method but GET/HEAD outside `/api/`): same origin only
    ///    ([`crate::api_session::same_origin`]), whatever the credentials; sign-in and sign-out
    ///    need nothing more, the others an operator (bearer or session).
    /// 3. Other requests that change state (the JSON API): the bearer token; a session cookie
    ///    does not count there.
    /// 4. Reads: free, unless a token is configured; then an operator, except `/healthz`, the
    ///    sign-in page and the static assets. A browser asking for a page is sent to `/login`.
    pub(crate) fn admit(
        &self,
        method: &Method,
        headers: &HeaderMap,
        uri: &Uri,
        now: Instant,
    ) -> Result<Option<Operator>, Box<Response>> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| uri.authority().map(|a| a.as_str().to_owned()));
        match host {
            Some(h) if self.host_allowed(&h) => {}
            Some(h) => {
                tracing::debug!(host = %h, "HTTP request with an unknown Host header refused");
                return Err(Box::new(
                    (
                        StatusCode::FORBIDDEN,
                        format!(
                            "this API does not answer to the host name {:?}; if clients reach the \
                         CMA by that name, allow it with --api-host (ASSIM_API_HOSTS)\n",
                            strip_port(&h)
                        ),
                    )
                        .into_response(),
                ));
            }
            None => {
                return Err(Box::new(
                    (
                        StatusCode::BAD_REQUEST,
                        "the request has no Host header; send the address of the API as Host\n",
                    )
                        .into_response(),
                ));
            }
        }
        let path = uri.path();
        let mutating = !matches!(*method, Method::GET | Method::HEAD);
        let bearer = self.authorized(headers);
        let session = !bearer
            && crate::api_session::session_cookie(headers)
                .is_some_and(|id| self.sessions().check(now, id));
        let operator = match (bearer, session) {
            (true, _) => Some(Operator::Bearer),
            (false, true) => Some(Operator::Session),
            _ => None,
        };
        let page = !path.starts_with("/api/") && path != "/metrics" && path != "/healthz";
        if mutating && page {
            if !crate::api_session::same_origin(headers, uri) {
                tracing::info!(path, "a form post from another site refused");
                return Err(Box::new(plain(
                    StatusCode::FORBIDDEN,
                    "this form was not posted from this CMA's own page (its Origin or Referer \
                     names another site, or none): refused, so another site cannot act in \
                     your name; open the page at this address and post it from there\n"
                        .into(),
                )));
            }
            if matches!(path, "/login" | "/logout") || operator.is_some() {
                return Ok(operator);
            }
            let back = crate::api_session::referer_path(headers);
            let viewer = assim_web::Viewer { path: back.to_string(), ..Default::default() };
            return Err(Box::new(assim_web::operator::notice(
                &viewer,
                StatusCode::UNAUTHORIZED,
                "Sign in first",
                "This needs the operator: sign in with the CMA's API token (your session may \
                 have ended), or send Authorization: Bearer TOKEN.",
                None,
            )));
        }
        // `/healthz` says only "ok" (or that the store refuses writes, without its error):
        // load balancers and service managers probe it without a token. The sign-in page and
        // its style sheet must be readable before signing in.
        let open_read = path == "/healthz" || path == "/login" || path.starts_with("/static/");
        let needs_token = if mutating {
            !bearer
        } else {
            self.reads_need_token && operator.is_none() && !open_read
        };
        if needs_token && !mutating && page {
            let next = uri.path_and_query().map_or("/", |p| p.as_str());
            let to = assim_web::operator::login_href(next);
            let mut r = StatusCode::SEE_OTHER.into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&to) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Err(Box::new(r));
        }
        if needs_token {
            let what = if mutating { "a request that changes state" } else { "this API" };
            return Err(Box::new(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    format!(
                        "{what} needs the CMA's API token (Authorization: Bearer TOKEN): the token \
                     is in {} on the CMA host, or the one set with --api-token; the assim CLI \
                     reads --api-token-file (ASSIM_API_TOKEN_FILE) or --api-token \
                     (ASSIM_API_TOKEN)\n",
                        self.token_file.display()
                    ),
                )
                    .into_response(),
            ));
        }
        Ok(operator)
    }

    /// Whether an API-set check may run what it names; `Err` is the 400 answer's text.
    pub fn check_program(&self, check: &StoredCheck) -> Result<(), String> {
        let program = match check.kind.as_str() {
            "nagios" => check.argv.first(),
            "lsb" => check.argv.first(),
            // OCF names are checked to be plain names by the check parser; systemd, tcp and
            // process run no program named by the request.
            _ => return Ok(()),
        };
        let Some(program) = program else { return Ok(()) };
        if !program.contains('/') {
            if program == "." || program == ".." {
                return Err(format!("check {}: {program:?} is not a program name", check.name));
            }
            return Ok(());
        }
        let path = Path::new(program);
        let normal = path.is_absolute()
            && path.components().skip(1).all(|c| matches!(c, Component::Normal(_)));
        if normal
            && self.check_plugin_dirs.iter().any(|d| path.starts_with(d) && path != d.as_path())
        {
            return Ok(());
        }
        let dirs: Vec<String> =
            self.check_plugin_dirs.iter().map(|d| d.display().to_string()).collect();
        Err(format!(
            "check {}: {program:?} is not inside the CMA's check_plugin_dirs ({}): checks set \
             through the API run only programs from those directories (a name without / runs \
             from the nanoprobe's plugin directory); add a directory with --check-plugin-dir \
             (ASSIM_CHECK_PLUGIN_DIRS, config key check_plugin_dirs)",
            check.name,
            if dirs.is_empty() { "none".to_string() } else { dirs.join(", ") }
        ))
    }
}

/// The middleware in front of every route: [`ApiAccess::admit`]; an operator's request
/// carries an [`Operator`] extension (the web page shows and runs "Run now" only then).
pub(crate) async fn guard(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    match state.access.admit(req.method(), req.headers(), req.uri(), Instant::now()) {
        Ok(operator) => {
            req.extensions_mut().remove::<Operator>();
            if let Some(op) = operator {
                req.extensions_mut().insert(op);
            }
            next.run(req).await
        }
        Err(answer) => *answer,
    }
}

/// A plain-text answer.
fn plain(status: StatusCode, text: String) -> Response {
    (status, text).into_response()
}

/// `Host` without its port, lower case, without a trailing dot; IPv6 without brackets.
fn strip_port(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    normal_host(name)
}

fn normal_host(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Validates `--api-host` names: DNS names or IP addresses.
pub fn validate_hosts(hosts: &[String]) -> anyhow::Result<()> {
    for h in hosts {
        let ok = !h.is_empty()
            && h.len() <= 253
            && (h.parse::<IpAddr>().is_ok()
                || h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        if !ok {
            bail!("--api-host {h:?}: not a host name or IP address (letters, digits, - and .)");
        }
    }
    Ok(())
}

/// Validates `--check-plugin-dir` entries: absolute, normalised, not `/`.
pub fn validate_plugin_dirs(dirs: &[PathBuf]) -> anyhow::Result<()> {
    for d in dirs {
        let normal =
            d.is_absolute() && d.components().skip(1).all(|c| matches!(c, Component::Normal(_)));
        if !normal || d == Path::new("/") {
            bail!(
                "check_plugin_dirs {}: give an absolute directory without . or .. (and not /)",
                d.display()
            );
        }
    }
    Ok(())
}

/// Reads the token file, or creates it (0600, 32 random bytes as hex) when it does not exist.
/// A file that group or others may read, or that is not a token, is an error that says what to
/// do.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    use std::io::Write as _;
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if !meta.is_file() {
                bail!("{} is not a regular file; remove it and restart the CMA", path.display());
            }
            if mode & 0o077 != 0 {
                bail!(
                    "{} has mode {mode:04o}: the API token must be readable by its owner only \
                     (chmod 600 {}), or remove it and restart the CMA to create a new one",
                    path.display(),
                    path.display()
                );
            }
            if meta.len() > 1024 {
                bail!("{} is {} bytes long, not an API token", path.display(), meta.len());
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API token {}", path.display()))?;
            let token = text.trim();
            if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
                bail!(
                    "{} does not hold an API token (at least 16 printable characters); remove \
                     it and restart the CMA to create a new one",
                    path.display()
                );
            }
            Ok(token.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            let token = hex::encode(bytes);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create the API token {}", path.display()))?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("cannot write the API token {}", path.display()))?;
            tracing::info!(file = %path.display(), "created the operator's API token");
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(listen: &str, hosts: &[&str]) -> ApiAccess {
        ApiAccess::new(
            "t0k3n-t0k3n-t0k3n-t0k3n",
            None,
            listen.parse().unwrap(),
            &hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            &DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn item_6_host_names_are_checked() {
        let a = access("127.0.0.1:1985", &["CMA.example.com"]);
        for ok in [
            "localhost:1985",
            "LOCALHOST",
            "127.0.0.1:1985",
            "127.0.0.2",
            "[::1]:1985",
            "cma.example.com:1985",
            "cma.example.com.",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:1985", "localhost.evil.example", "10.0.0.1:1985", "", "[::]"] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        let wild = access("0.0.0.0:1985", &[]);
        assert!(wild.host_allowed("10.0.0.1:1985"));
        assert!(!wild.host_allowed("rebind.evil.example:1985"));
        let own = access("192.0.2.7:1985", &[]);
        assert!(own.host_allowed("192.0.2.7:1985") && !own.host_allowed("192.0.2.8"));
    }

    #[test]
    fn item_6_check_programs_only_from_plugin_dirs() {
        let a = access("127.0.0.1:1985", &[]);
        let check = |kind: &str, argv: &[&str]| StoredCheck {
            name: "c".into(),
            kind: kind.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            params: Default::default(),
            interval_s: 60,
            retry_interval_s: 15,
            max_attempts: 3,
            timeout_s: 10,
        };
        for ok in [
            check("nagios", &["check_tcp", "-H", "x"]),
            check("nagios", &["/usr/lib/nagios/plugins/check_tcp"]),
            // `.` inside a path names the same file.
            check("nagios", &["/usr/lib/nagios/plugins/./check_tcp"]),
            check("lsb", &["ssh"]),
            check("lsb", &["/etc/init.d/ssh"]),
            check("tcp", &["/tmp", "1"]),
            check("process", &["/usr/sbin/sshd"]),
        ] {
            assert!(a.check_program(&ok).is_ok(), "{ok:?}");
        }
        for bad in [
            check("nagios", &["/tmp/evil"]),
            check("nagios", &["/usr/lib/nagios/plugins/../../../tmp/evil"]),
            check("nagios", &["./check_tcp"]),
            check("nagios", &["../check_tcp"]),
            check("nagios", &[".."]),
            check("nagios", &["/usr/lib/nagios/plugins"]),
            check("nagios", &["/usr/lib/nagios/pluginsX/x"]),
            check("lsb", &["/bin/sh"]),
        ] {
            let err = a.check_program(&bad).unwrap_err();
            assert!(err.contains("check_plugin_dirs") || err.contains("not a program"), "{err}");
        }
    }

    #[test]
    fn item_6_token_file_is_created_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let t = load_or_create_token(&path).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), t, "kept across starts");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_token(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn item_6_tokens_compare_by_value() {
        let a = ApiAccess::new(
            "file-token-file-token",
            Some("configured-token"),
            "127.0.0.1:1985".parse().unwrap(),
            &[],
            &[],
        );
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert!(a.authorized(&h("Bearer file-token-file-token")));
        assert!(a.authorized(&h("Bearer configured-token")));
        assert!(!a.authorized(&h("Bearer file-token-file-tokeN")));
        assert!(!a.authorized(&h("Bearer ")));
        assert!(!a.authorized(&h("Basic file-token-file-token")));
        assert!(!a.authorized(&HeaderMap::new()));
    }
}
