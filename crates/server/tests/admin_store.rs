//! Store tests for API keys and the audit log, on SQLite and (when
//! `ZTMESH_TEST_DATABASE_URL` is set) PostgreSQL, each in a fresh database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use ztmesh_server::Store;
use ztmesh_server::secrets::hash_secret;
use ztmesh_server::store::{Actor, ApiKeyRecord, AuditFilter, RevokeOutcome, unix_now};

fn key(id: &str, role: &str, expires_at: Option<i64>) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        role: role.into(),
        description: format!("{role} key"),
        created_at: unix_now(),
        created_by: "test".into(),
        expires_at,
        revoked_at: None,
    }
}

fn actor(id: &str, role: &str) -> Actor {
    Actor {
        id: id.into(),
        role: role.into(),
        source: "192.0.2.7:5000".into(),
    }
}

#[tokio::test]
async fn audit_log_refuses_update_and_delete() {
    for (backend, url) in common::backends().await {
        let store = Store::connect(&url).await.unwrap();
        store
            .audit(
                &actor("apikey:a", "owner"),
                "policy.set",
                "version 1",
                "",
                "{}",
            )
            .await
            .unwrap();
        // Straight SQL, as an admin with database access would try it.
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        for sql in [
            "UPDATE audit_log SET actor = 'someone-else'",
            "DELETE FROM audit_log",
        ] {
            let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
            assert!(
                err.to_string().contains("audit records cannot be"),
                "{backend}: {sql}: {err}"
            );
        }
        if backend == "postgres" {
            let err = sqlx::query("TRUNCATE audit_log")
                .execute(&pool)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("audit records cannot be"), "{err}");
        }
        let entries = store.audit_entries().await.unwrap();
        assert_eq!(entries.len(), 1, "{backend}: the record is still there");
        assert_eq!(entries[0].0, "apikey:a", "{backend}: unchanged");
        // Installing the triggers again at the next start is harmless.
        drop(store);
        let again = Store::connect(&url).await.unwrap();
        assert_eq!(again.audit_entries().await.unwrap().len(), 1, "{backend}");
    }
}

#[tokio::test]
async fn audit_records_filter_and_keep_who_what_where() {
    for (backend, url) in common::backends().await {
        let store = Store::connect(&url).await.unwrap();
        let mut signal = store.audit_signal();
        let alice = actor("apikey:alice", "admin");
        let bob = actor("apikey:bob", "auditor");
        for i in 0..5 {
            store
                .audit(
                    &alice,
                    "device.status",
                    &format!("d{i}"),
                    "{\"a\":1}",
                    "{\"a\":2}",
                )
                .await
                .unwrap();
        }
        store
            .audit(&bob, "policy.set", "version 1", "", "")
            .await
            .unwrap();
        assert!(
            signal.has_changed().unwrap(),
            "{backend}: watchers are woken"
        );
        signal.borrow_and_update();

        let all = store
            .audit_records(&AuditFilter::default(), 100)
            .await
            .unwrap();
        assert_eq!(all.len(), 6, "{backend}");
        assert!(
            all.windows(2).all(|w| w[0].id < w[1].id),
            "{backend}: oldest first"
        );
        let first = &all[0];
        assert_eq!(
            (
                first.actor.as_str(),
                first.role.as_str(),
                first.source.as_str()
            ),
            ("apikey:alice", "admin", "192.0.2.7:5000"),
            "{backend}"
        );
        assert_eq!(
            (first.before.as_str(), first.after.as_str()),
            ("{\"a\":1}", "{\"a\":2}")
        );

        let newest_two = store
            .audit_records(&AuditFilter::default(), 2)
            .await
            .unwrap();
        assert_eq!(newest_two.len(), 2);
        assert_eq!(
            newest_two[1].action, "policy.set",
            "{backend}: the newest, last"
        );
        assert_eq!(newest_two[0].object, "d4", "{backend}");

        let by_bare_id = AuditFilter {
            actor: "bob".into(),
            ..AuditFilter::default()
        };
        let bobs = store.audit_records(&by_bare_id, 100).await.unwrap();
        assert_eq!(bobs.len(), 1, "{backend}: a bare key id matches apikey:ID");
        let by_action = AuditFilter {
            action: "device.status".into(),
            ..AuditFilter::default()
        };
        assert_eq!(store.audit_records(&by_action, 100).await.unwrap().len(), 5);
        let future = AuditFilter {
            since: unix_now() + 3600,
            ..AuditFilter::default()
        };
        assert!(store.audit_records(&future, 100).await.unwrap().is_empty());
        let oldest_two = store
            .audit_records_from(&AuditFilter::default(), 2)
            .await
            .unwrap();
        assert_eq!(oldest_two[0].object, "d0", "{backend}");
    }
}

#[tokio::test]
async fn api_keys_revoke_and_the_last_owner_stays() {
    for (backend, url) in common::backends().await {
        let store = Store::connect(&url).await.unwrap();
        let by = actor("apikey:o1", "owner");
        store
            .insert_api_key(&key("o1", "owner", None), &hash_secret("s1"), &by)
            .await
            .unwrap();
        store
            .insert_api_key(&key("o2", "owner", None), &hash_secret("s2"), &by)
            .await
            .unwrap();
        // An expired owner key does not count as a way back in.
        store
            .insert_api_key(
                &key("o3", "owner", Some(unix_now() - 10)),
                &hash_secret("s3"),
                &by,
            )
            .await
            .unwrap();
        store
            .insert_api_key(&key("a1", "admin", None), &hash_secret("s4"), &by)
            .await
            .unwrap();

        let (hash, record) = store.api_key("o1").await.unwrap().unwrap();
        assert_eq!(hash, hash_secret("s1"), "{backend}");
        assert_eq!((record.role.as_str(), record.expires_at), ("owner", None));
        assert!(
            !store
                .api_key("o3")
                .await
                .unwrap()
                .unwrap()
                .1
                .is_usable(unix_now())
        );

        let revoked = store.revoke_api_key("o1", &by).await.unwrap();
        assert!(
            matches!(&revoked, RevokeOutcome::Revoked(k) if k.revoked_at.is_some()),
            "{backend}: {revoked:?}"
        );
        assert!(matches!(
            store.revoke_api_key("o1", &by).await.unwrap(),
            RevokeOutcome::AlreadyRevoked(_)
        ));
        assert_eq!(
            store.revoke_api_key("o2", &by).await.unwrap(),
            RevokeOutcome::LastOwner,
            "{backend}: o3 is expired, a1 is no owner"
        );
        assert_eq!(
            store.revoke_api_key("nope", &by).await.unwrap(),
            RevokeOutcome::NotFound
        );
        assert!(matches!(
            store.revoke_api_key("a1", &by).await.unwrap(),
            RevokeOutcome::Revoked(_)
        ));

        let listed = store.api_keys().await.unwrap();
        assert_eq!(listed.len(), 4, "{backend}");
        let actions: Vec<String> = store
            .audit_entries()
            .await
            .unwrap()
            .into_iter()
            .map(|(_, action, _)| action)
            .collect();
        assert_eq!(
            actions.iter().filter(|a| *a == "api_key.create").count(),
            4,
            "{backend}"
        );
        assert_eq!(
            actions.iter().filter(|a| *a == "api_key.revoke").count(),
            2,
            "{backend}: refusals change nothing and are not revocations"
        );
    }
}

/// Two owners revoking each other's keys at the same moment: one wins, the
/// other is refused, and an owner key remains.
#[tokio::test]
async fn concurrent_owner_revocations_leave_one_owner() {
    for (backend, url) in common::backends().await {
        let store = Arc::new(Store::connect(&url).await.unwrap());
        let by = actor("apikey:x", "owner");
        store
            .insert_api_key(&key("k", "owner", None), &hash_secret("s"), &by)
            .await
            .unwrap();
        let mut survivor = "k".to_owned();
        for round in 0..5 {
            let new = format!("n{round}");
            store
                .insert_api_key(&key(&new, "owner", None), &hash_secret("s"), &by)
                .await
                .unwrap();
            let (s1, s2) = (Arc::clone(&store), Arc::clone(&store));
            let (by1, by2) = (by.clone(), by.clone());
            let (old2, new2) = (survivor.clone(), new.clone());
            let first = tokio::spawn(async move { s1.revoke_api_key(&old2, &by1).await.unwrap() });
            let second = tokio::spawn(async move { s2.revoke_api_key(&new2, &by2).await.unwrap() });
            let outcomes = [first.await.unwrap(), second.await.unwrap()];
            let revoked = outcomes
                .iter()
                .filter(|o| matches!(o, RevokeOutcome::Revoked(_)))
                .count();
            assert_eq!(revoked, 1, "{backend} round {round}: {outcomes:?}");
            assert!(
                outcomes.contains(&RevokeOutcome::LastOwner),
                "{backend} round {round}: {outcomes:?}"
            );
            let usable: Vec<String> = store
                .api_keys()
                .await
                .unwrap()
                .into_iter()
                .filter(|k| k.role == "owner" && k.is_usable(unix_now()))
                .map(|k| k.id)
                .collect();
            assert_eq!(usable.len(), 1, "{backend} round {round}");
            survivor = usable[0].clone();
        }
    }
}
