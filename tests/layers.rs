//! The layer rule, checked on the real dependency graph: the transport knows no serde, the codec
//! knows no sockets, and no library crate pulls in an async runtime.

use std::process::Command;

/// Names of every package in the normal (non-dev) dependency tree of `package`.
fn dependency_names(package: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree", "--edges", "normal", "--prefix", "none", "--format", "{p}", "-p",
        ])
        .arg(package)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_absent(package: &str, forbidden: &[&str]) {
    let names = dependency_names(package);
    assert!(
        names.iter().any(|name| name == package),
        "tree of {package} lists itself"
    );
    for name in &names {
        assert!(
            !forbidden
                .iter()
                .any(|bad| name == bad || name.starts_with(&format!("{bad}_"))),
            "{package} depends on {name}, which its layer must not know"
        );
    }
}

const ASYNC_RUNTIMES: [&str; 6] = [
    "tokio",
    "async-std",
    "smol",
    "async-executor",
    "futures-executor",
    "glommio",
];

#[test]
fn transport_depends_on_no_serde_and_no_async_runtime() {
    assert_absent("rpc-transport", &["serde", "postcard", "serde_json"]);
    assert_absent("rpc-transport", &ASYNC_RUNTIMES);
}

#[test]
fn codec_depends_on_no_socket_or_event_loop_crate() {
    assert_absent("rpc-codec", &["mio", "rpc-transport", "crossbeam-channel"]);
    assert_absent("rpc-codec", &ASYNC_RUNTIMES);
}

#[test]
fn core_and_facade_depend_on_no_async_runtime() {
    assert_absent("rpc-core", &ASYNC_RUNTIMES);
    assert_absent("netrpc", &ASYNC_RUNTIMES);
}
