//! The debug page in a real browser (Go: `/debug/rpc`; SEEDS §5): headless Chromium renders
//! `http://127.0.0.1:<port>/debug/rpc` after some calls; its DOM holds the method names and
//! counts, and its screenshot is a real PNG. Skipped, with a message, where
//! `/usr/bin/chromium` is missing (`apt-get install chromium`; `.ci/run` installs it).

mod util;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netrpc::{Client, Server};
use util::{Args, ArithClient, ArithServer, Calculator};

const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one Chromium run may take before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(30);

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("netrpc-{label}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs Chromium headless on `url` with `mode` (`--screenshot=...` or `--dump-dom`), its
/// standard output going to `stdout`; kills it after [`BROWSER_TIMEOUT`].
fn run_chromium(work: &Path, mode: &str, url: &str, stdout: &Path) {
    let profile = work.join(format!("profile{}", mode.len()));
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--window-size=1024,768")
        .arg(mode)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(File::create(stdout).expect("create the stdout file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("poll chromium") {
            assert!(status.success(), "chromium {mode} failed: {status}");
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {mode} took over {BROWSER_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn chromium_renders_the_debug_page_with_the_method_counts() {
    if !Path::new(CHROMIUM).exists() {
        println!("skipped: {CHROMIUM} is missing (apt-get install chromium)");
        return;
    }
    let server = Server::new();
    server
        .register(ArithServer::new(Calculator))
        .expect("register Arith");
    let http = server.serve_http("127.0.0.1:0").expect("serve HTTP");
    let arith = ArithClient::new(Client::dial_http(http.local_addr()).expect("dial_http"));
    for b in 1..=4 {
        arith.multiply(&Args { a: 3, b }).expect("multiply");
    }
    arith.divide(&Args { a: 8, b: 2 }).expect("divide");
    arith.divide(&Args { a: 8, b: 0 }).unwrap_err();

    let work = TempDir::new("screenshot");
    let url = format!("http://{}/debug/rpc", http.local_addr());

    let dom_path = work.0.join("dom.html");
    run_chromium(&work.0, "--dump-dom", &url, &dom_path);
    let dom = fs::read_to_string(&dom_path).expect("read the dumped DOM");
    assert!(dom.contains("<h2>Service Arith</h2>"), "{dom}");
    assert!(
        dom.contains(
            "<tr><td>Multiply</td><td class=\"count\">4</td><td class=\"count\">0</td></tr>"
        ),
        "{dom}"
    );
    assert!(
        dom.contains(
            "<tr><td>Divide</td><td class=\"count\">2</td><td class=\"count\">1</td></tr>"
        ),
        "{dom}"
    );

    let png_path = work.0.join("debug_rpc.png");
    let screenshot = format!("--screenshot={}", png_path.display());
    run_chromium(&work.0, &screenshot, &url, &work.0.join("screenshot.log"));
    let png = fs::read(&png_path).expect("chromium wrote the screenshot");
    assert_eq!(
        &png[..8],
        b"\x89PNG\r\n\x1a\n",
        "not a PNG signature: {:?}",
        &png[..8.min(png.len())]
    );
    // A blank 1024x768 page compresses to about 3 KB; text and tables make it larger.
    assert!(
        png.len() > 8 * 1024,
        "a suspiciously small PNG: {} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("NETRPC_KEEP_SCREENSHOT") {
        fs::copy(&png_path, &keep).expect("copy the screenshot");
        println!("screenshot kept at {keep}");
    }
    // The browser's two page loads were counted.
    assert_eq!(http.stats().pages_served, 2);
}
