//! moto (the local AWS) started with IAM authorization as AWS does it (`moto_server.py` beside
//! this file): calls are free until [`enforce_iam`] switches authorization on (moto's
//! `INITIAL_NO_AUTH_ACTION_COUNT`, reset through `/moto-api/reset-auth`), so the harness creates
//! resources and users first; from then on every call needs the keys of a user whose policy
//! allows it, and each decision is appended to the audit log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

const LAUNCHER: &str = include_str!("moto_server.py");

/// A directory on PATH holding `name`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
}

/// The Python interpreter moto is installed for (the one beside `moto_server` on PATH).
fn moto_python() -> anyhow::Result<PathBuf> {
    let moto =
        which("moto_server").context("moto_server is not on PATH (`make tools` installs it into .venv-tools)")?;
    let dir = moto.parent().context("moto_server's directory")?;
    for p in ["python3", "python"] {
        if dir.join(p).is_file() {
            return Ok(dir.join(p));
        }
    }
    // A shebang names it otherwise.
    let first = std::fs::read_to_string(&moto)?.lines().next().unwrap_or_default().to_string();
    first.strip_prefix("#!").map(|p| PathBuf::from(p.trim())).context("cannot tell which Python runs moto_server")
}

/// The command that starts moto on `port` with the launcher written into `dir`; decisions go to
/// `audit_log`.
pub fn command(dir: &Path, port: u16, audit_log: &Path) -> anyhow::Result<tokio::process::Command> {
    std::fs::create_dir_all(dir)?;
    let script = dir.join("moto_server.py");
    std::fs::write(&script, LAUNCHER)?;
    let mut cmd = tokio::process::Command::new(moto_python()?);
    cmd.arg(&script)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("MOTO_IAM_AUDIT_LOG", audit_log)
        // No authorization until the harness has set everything up (see `enforce_iam`).
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "inf")
        .stdin(Stdio::null());
    Ok(cmd)
}

/// Waits until moto answers on `endpoint`.
pub async fn wait_ready(endpoint: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http.get(format!("{endpoint}/moto-api/")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("moto did not come up at {endpoint}")
}

/// Switches authorization on: every later call is checked against its caller's policies.
pub async fn enforce_iam(endpoint: &str) -> anyhow::Result<()> {
    let r = reqwest::Client::new().post(format!("{endpoint}/moto-api/reset-auth")).body("0").send().await?;
    anyhow::ensure!(r.status().is_success(), "moto refused to switch authorization on: {}", r.status());
    Ok(())
}

/// A moto server owned by a test: started with [`command`], stopped on drop.
pub struct Moto {
    pub child: tokio::process::Child,
    pub endpoint: String,
    pub audit_log: PathBuf,
}

impl Moto {
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let audit_log = dir.join("iam-audit.jsonl");
        let log = std::fs::File::create(dir.join("moto.log"))?;
        let child = command(dir, port, &audit_log)?
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("could not start moto")?;
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_ready(&endpoint).await?;
        Ok(Self { child, endpoint, audit_log })
    }
}
