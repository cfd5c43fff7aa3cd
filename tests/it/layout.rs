//! The code's layout keeps its promises: the pure core (`src/domain/`) does
//! no I/O and nothing async.

use std::path::Path;

/// Crates and modules the pure core must never use (addresses such as
/// `std::net::IpAddr` are plain values and allowed; sockets are not).
const FORBIDDEN: [&str; 9] = [
    "tokio",
    "async_nats",
    "reqwest",
    "axum",
    "hyper",
    "std::fs",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
];

#[test]
fn the_pure_core_imports_nothing_async_and_does_no_io() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for name in FORBIDDEN {
                let used = if name.contains(':') || name.starts_with(char::is_uppercase) {
                    code.contains(name)
                } else {
                    code.contains(&format!("{name}::"))
                        || code.contains(&format!("use {name}"))
                        || code.contains(&format!("{name}!"))
                };
                assert!(
                    !used,
                    "{}:{}: the pure core uses {name}: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
    }
    assert!(files >= 7, "the core's files are in {}", dir.display());
}
