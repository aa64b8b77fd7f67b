//! Shared by the store-level test files: fresh databases on every backend.

#![allow(dead_code)]

use ztmesh_server::secrets::random_token;

/// Fresh databases: one SQLite file, and one PostgreSQL database if
/// `ZTMESH_TEST_DATABASE_URL` is set (tests/run-all.sh starts a throwaway
/// server). Under CI a missing PostgreSQL is a failure.
pub async fn backends() -> Vec<(String, String)> {
    let dir = std::env::temp_dir().join(format!(
        "ztmesh-store-{}-{}",
        std::process::id(),
        random_token(6)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut urls = vec![(
        "sqlite".to_owned(),
        format!("sqlite://{}/t.db?mode=rwc", dir.display()),
    )];
    match std::env::var("ZTMESH_TEST_DATABASE_URL") {
        Ok(base) if !base.is_empty() => {
            let name = format!(
                "ztmesh_test_{}_{}",
                std::process::id(),
                random_token(6)
                    .to_ascii_lowercase()
                    .replace(['-', '_'], "x")
            );
            ztmesh_server::store::create_database(&base, &name)
                .await
                .expect("creating a test database");
            let (prefix, _) = base.rsplit_once('/').unwrap();
            urls.push(("postgres".to_owned(), format!("{prefix}/{name}")));
        }
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "CI must run the store tests on PostgreSQL: set ZTMESH_TEST_DATABASE_URL (tests/run-all.sh does)"
            )
        }
        _ => eprintln!(
            "SKIPPED on PostgreSQL: ZTMESH_TEST_DATABASE_URL is not set (tests/run-all.sh sets it)"
        ),
    }
    urls
}
