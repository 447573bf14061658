//! A real browser for the web UI's tests: Debian's ChromeDriver and headless Chromium
//! (`tests/env/browser.sh install`), driven over WebDriver; and `capstan ui` as a process.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// ChromeDriver and one headless Chromium session, 1280x800. Dropping it ends both: they run in
/// a process group of their own, killed whole.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "Chromium and ChromeDriver are missing: run tests/env/browser.sh install (make tools does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("starting chromedriver")
        };
        let profile = tempfile::tempdir().unwrap();
        // The flags the machine needs: root (no sandbox), no GPU, and no background traffic to
        // the internet, which this network refuses.
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,800".into(),
            "--hide-scrollbars".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": args}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            // ChromeDriver on loopback speaks plain HTTP: no TLS stack.
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => panic!("connecting to chromedriver: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// The text of the first element `css` finds, waiting up to 30 s for one.
    pub async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.unwrap()
    }

    pub async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
    }

    /// Waits up to `timeout` until the text of `css` satisfies `done`; returns it.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} still reads {text:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium is a child of ChromeDriver, in its process group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

/// `capstan ui` as a process, with a kubeconfig and more arguments; killed on drop.
pub struct UiProcess {
    pub url: String,
    child: tokio::process::Child,
}

impl UiProcess {
    pub async fn start(kubeconfig: &Path, args: &[&str]) -> UiProcess {
        let mut child = tokio::process::Command::new(super::env::capstan_binary())
            .arg("ui")
            .arg("--address=127.0.0.1:0")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting capstan ui");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("capstan ui prints its address within 60 s")
            .unwrap()
            .expect("capstan ui exited before serving");
        let url = line
            .rsplit_once(' ')
            .map(|(_, url)| url.trim_end_matches('/').to_string())
            .expect("an address");
        UiProcess { url, child }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
