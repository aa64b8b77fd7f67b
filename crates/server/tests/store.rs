//! Store tests, run on SQLite and, when `ZTMESH_TEST_DATABASE_URL` points at
//! a PostgreSQL server (tests/run-all.sh starts a throwaway one), on
//! PostgreSQL too, each in a fresh database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::backends;
use std::sync::Arc;

use sqlx::Row;
use ztmesh_server::secrets::{hash_secret, random_token};
use ztmesh_server::store::{
    Actor, ApiKeyRecord, Credential, DeviceRecord, DeviceStatus, EnrollError, NewDevice, Settings,
    Store, UserRecord, unix_now,
};

fn overlay() -> ipnet::Ipv4Net {
    "100.64.0.0/10".parse().unwrap()
}

async fn token(store: &Store, reusable: bool, expires_at: i64) -> (String, String) {
    let id = random_token(9);
    let secret = random_token(32);
    store
        .insert_token(
            &id,
            &hash_secret(&secret),
            reusable,
            false,
            &["web".into()],
            expires_at,
            &Actor::system("test"),
        )
        .await
        .unwrap();
    (id, secret)
}

fn device<'a>(id: &'a str, key: &'a str) -> NewDevice<'a> {
    NewDevice {
        id,
        name: id,
        public_key: key,
        cert_fingerprint: key,
        key_expires_at: None,
        source: "192.0.2.1:40000",
    }
}

fn cred<'a>(id: &'a str, secret: &'a str) -> Credential<'a> {
    Credential::Token { id, secret }
}

/// Enrolls one device named `name` (key `k` + name) with a fresh token.
async fn enroll_one(store: &Store, name: &str) -> DeviceRecord {
    let (id, secret) = token(store, true, unix_now() + 3600).await;
    let key = format!("k{name}");
    let (_, dev) = store
        .enroll(
            &cred(&id, &secret),
            device(name, &key),
            overlay(),
            &Settings::default(),
        )
        .await
        .unwrap();
    dev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_use_token_under_50_concurrent_enrollments() {
    for (backend, url) in backends().await {
        let store = Store::connect(&url).await.unwrap();
        let (id, secret) = token(&store, false, unix_now() + 3600).await;
        let mut tasks = Vec::new();
        for n in 0..50 {
            let store = store.clone();
            let (id, secret) = (id.clone(), secret.clone());
            tasks.push(tokio::spawn(async move {
                let name = format!("dev{n}");
                store
                    .enroll(
                        &cred(&id, &secret),
                        device(&name, &name),
                        overlay(),
                        &Settings::default(),
                    )
                    .await
            }));
        }
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => ok += 1,
                Err(EnrollError::AlreadyUsed) => {}
                Err(e) => panic!("{backend}: unexpected error {e:#}"),
            }
        }
        assert_eq!(ok, 1, "{backend}: a single-use token enrolls exactly once");
        assert_eq!(store.devices().await.unwrap().len(), 1, "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_rules_policies_and_audit() {
    for (backend, url) in backends().await {
        let store = Arc::new(Store::connect(&url).await.unwrap());
        // Reusable token: unique addresses, lowest first.
        let (id, secret) = token(&store, true, unix_now() + 3600).await;
        let (_, a) = store
            .enroll(
                &cred(&id, &secret),
                device("a", "ka"),
                overlay(),
                &Settings::default(),
            )
            .await
            .unwrap();
        let (_, b) = store
            .enroll(
                &cred(&id, &secret),
                device("b", "kb"),
                overlay(),
                &Settings::default(),
            )
            .await
            .unwrap();
        assert_eq!(a.address.to_string(), "100.64.0.1", "{backend}");
        assert_eq!(b.address.to_string(), "100.64.0.2", "{backend}");
        assert_eq!(a.tags, ["web"], "{backend}: tags come from the token");

        // Refusals.
        let dup = store
            .enroll(
                &cred(&id, &secret),
                device("a", "kz"),
                overlay(),
                &Settings::default(),
            )
            .await;
        assert!(matches!(dup, Err(EnrollError::NameTaken(_))), "{backend}");
        let key = store
            .enroll(
                &cred(&id, &secret),
                device("z", "ka"),
                overlay(),
                &Settings::default(),
            )
            .await;
        assert!(matches!(key, Err(EnrollError::KeyTaken)), "{backend}");
        let wrong = store
            .enroll(
                &cred(&id, "wrong"),
                device("y", "ky"),
                overlay(),
                &Settings::default(),
            )
            .await;
        assert!(matches!(wrong, Err(EnrollError::InvalidToken)), "{backend}");
        let unknown = store
            .enroll(
                &cred("nope", &secret),
                device("y", "ky"),
                overlay(),
                &Settings::default(),
            )
            .await;
        assert!(
            matches!(unknown, Err(EnrollError::InvalidToken)),
            "{backend}"
        );
        let (old_id, old_secret) = token(&store, false, unix_now() - 1).await;
        let expired = store
            .enroll(
                &cred(&old_id, &old_secret),
                device("y", "ky"),
                overlay(),
                &Settings::default(),
            )
            .await;
        assert!(matches!(expired, Err(EnrollError::Expired)), "{backend}");

        // A refused single-use enrollment does not burn the token.
        let (once_id, once_secret) = token(&store, false, unix_now() + 3600).await;
        let taken = store
            .enroll(
                &cred(&once_id, &once_secret),
                device("a", "kq"),
                overlay(),
                &Settings::default(),
            )
            .await;
        assert!(matches!(taken, Err(EnrollError::NameTaken(_))), "{backend}");
        store
            .enroll(
                &cred(&once_id, &once_secret),
                device("c", "kc"),
                overlay(),
                &Settings::default(),
            )
            .await
            .unwrap();

        // Revocation and lookups.
        store
            .set_status(&a.id, DeviceStatus::Revoked, &Actor::system("test"))
            .await
            .unwrap();
        let found = store.device_by_fingerprint("ka").await.unwrap().unwrap();
        assert_eq!(found.status, DeviceStatus::Revoked, "{backend}");
        assert!(
            store
                .set_endpoint(&b.id, Some("10.0.0.2:51820"), "10.0.0.2")
                .await
                .unwrap()
        );
        assert!(
            !store
                .set_endpoint(&b.id, Some("10.0.0.2:51820"), "10.0.0.2")
                .await
                .unwrap(),
            "{backend}: unchanged"
        );

        // Policy versions.
        assert!(store.latest_policy().await.unwrap().is_none());
        assert_eq!(store.insert_policy("one", "apikey:x", "").await.unwrap(), 1);
        assert_eq!(
            store
                .insert_policy("two", "apikey:x", "first fix")
                .await
                .unwrap(),
            2
        );
        let latest = store.latest_policy().await.unwrap().unwrap();
        assert_eq!(
            (latest.version, latest.text.as_str()),
            (2, "two"),
            "{backend}"
        );
        assert_eq!(latest.comment, "first fix", "{backend}");
        let first = store.policy_version(1).await.unwrap().unwrap();
        assert_eq!(
            (first.text.as_str(), first.comment.as_str()),
            ("one", ""),
            "{backend}"
        );
        assert!(
            store.policy_version(3).await.unwrap().is_none(),
            "{backend}"
        );
        let history: Vec<u64> = store
            .policy_versions(10)
            .await
            .unwrap()
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(history, [2, 1], "{backend}");
        assert_eq!(
            store.policy_versions(1).await.unwrap().len(),
            1,
            "{backend}"
        );

        // Audit.
        store
            .audit(&Actor::system("apikey:x"), "device.revoke", "a", "", "")
            .await
            .unwrap();
        let entries = store.audit_entries().await.unwrap();
        assert_eq!(entries.last().unwrap().1, "device.revoke", "{backend}");

        // No secret is stored in clear: dump every text column.
        let key = ApiKeyRecord {
            id: "k1".into(),
            role: "owner".into(),
            description: String::new(),
            created_at: unix_now(),
            created_by: "test".into(),
            expires_at: None,
            revoked_at: None,
        };
        store
            .insert_api_key(
                &key,
                &hash_secret("api-secret-value"),
                &Actor::system("test"),
            )
            .await
            .unwrap();
        let dump = dump_text(&url).await;
        assert!(
            !dump.contains(&secret),
            "{backend}: join token secret stored in clear"
        );
        assert!(
            !dump.contains(&once_secret),
            "{backend}: join token secret stored in clear"
        );
        assert!(
            !dump.contains("api-secret-value"),
            "{backend}: API key stored in clear"
        );
        assert!(
            dump.contains(&hash_secret(&secret)),
            "{backend}: the dump did read the tokens"
        );
    }
}

async fn dump_text(url: &str) -> String {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let mut out = String::new();
    for (table, columns) in [
        (
            "devices",
            "id, name, public_key, address, tags, cert_fingerprint, status",
        ),
        ("join_tokens", "id, secret_hash, tags, created_by"),
        ("api_keys", "id, key_hash, role, description, created_by"),
        ("policies", "text, author"),
        (
            "audit_log",
            "actor, role, action, target, detail, before_state, after_state, source",
        ),
    ] {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM {table}"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        for row in rows {
            for i in 0..columns.split(',').count() {
                let value: String = row.try_get(i).unwrap();
                out.push_str(&value);
                out.push('\n');
            }
        }
    }
    out
}

#[tokio::test]
async fn unreachable_database_is_a_clear_error() {
    let err = Store::connect("postgres://ztmesh:hunter2@127.0.0.1:1/ztmesh")
        .await
        .err()
        .expect("port 1 has no database");
    let text = format!("{err:#}");
    assert!(
        text.contains("cannot open the database at postgres://ztmesh:***@127.0.0.1:1/ztmesh"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2"),
        "the password must not be shown: {text}"
    );
}

/// Policy versions and endpoint updates written at the same time all
/// succeed, with distinct versions (SQLite must not answer "locked").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_all_succeed() {
    for (backend, url) in backends().await {
        let store = Store::connect(&url).await.unwrap();
        let dev = enroll_one(&store, "w").await;
        let mut tasks = Vec::new();
        for n in 0..20 {
            let writer = store.clone();
            let dev_id = dev.id.clone();
            tasks.push(tokio::spawn(async move {
                writer
                    .set_endpoint(&dev_id, Some(&format!("10.0.0.{n}:51820")), "10.0.0.9")
                    .await
                    .map(|_| 0)
            }));
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.insert_policy("p", "t", "").await
            }));
        }
        let mut versions = Vec::new();
        for task in tasks {
            let v = task
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{backend}: {e:#}"));
            if v > 0 {
                versions.push(v);
            }
        }
        versions.sort_unstable();
        assert_eq!(versions, (1..=20).collect::<Vec<u64>>(), "{backend}");
    }
}

/// Found as a rare "internal server error" on `CreateUser` in CI while a
/// daemon reported to the same server: a transaction that reads before it
/// writes cannot take the write lock on SQLite once another connection
/// has written since its read (SQLITE_BUSY at once, the busy timeout does
/// not apply). Write transactions take the lock when they begin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audited_writes_succeed_while_another_connection_keeps_writing() {
    for (backend, url) in backends().await {
        let store = Store::connect(&url).await.unwrap();
        let dev = enroll_one(&store, "busy").await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (store, stop, dev_id) = (store.clone(), Arc::clone(&stop), dev.id.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let candidate = format!("10.0.{}.{}:51820", n / 250 % 250, n % 250 + 1);
                    store.set_candidates(&dev_id, &[candidate]).await.unwrap();
                    // A write a millisecond: far busier than daemons'
                    // reports, and not a loop that starves every other
                    // writer past the busy timeout.
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                n
            })
        };
        let users = 40;
        let mut tasks = Vec::new();
        for n in 0..users {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let user = UserRecord {
                    id: random_token(9),
                    name: format!("user{n}@example.com"),
                    password_hash: "not-a-real-hash".into(),
                    totp_sealed: "sealed".into(),
                    totp_last_step: None,
                    disabled: false,
                    created_at: unix_now(),
                    groups: vec!["eng".into()],
                };
                store.create_user(&user, &Actor::system("test")).await
            }));
        }
        let mut failed = Vec::new();
        for task in tasks {
            if let Err(e) = task.await.unwrap() {
                failed.push(format!("{e:#}"));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = writer.await.unwrap();
        assert!(
            failed.is_empty(),
            "{backend}: {} of {users} failed, e.g. {:?}",
            failed.len(),
            failed.first()
        );
        assert!(writes > 0, "{backend}: the writer ran");
        assert_eq!(store.users().await.unwrap().len(), users, "{backend}");
    }
}
