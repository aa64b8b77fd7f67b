//! The audit log over the admin API: who, role, what, object, before and
//! after, source; refused calls, enrollments and logins; the follow stream.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;
use ztmesh_e2e::{FakePosture, TestAgent, TestServer, totp_now};
use ztmesh_proto::v1;

const WAIT: Duration = Duration::from_secs(10);

async fn next_record(
    stream: &mut tonic::Streaming<v1::AuditRecord>,
    action: &str,
) -> v1::AuditRecord {
    tokio::time::timeout(WAIT, async {
        loop {
            let record = stream.next().await.unwrap().unwrap();
            if record.action == action {
                return record;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no `{action}` record streamed within {WAIT:?}"))
}

#[tokio::test]
async fn audit_records_who_what_where_and_streams_them() {
    audit_scenario(TestServer::start(None).await).await;
}

/// The same with the server on PostgreSQL (its append-only trigger, its
/// audit queries).
#[tokio::test]
async fn audit_on_postgresql() {
    let Some(url) = std::env::var("ZTMESH_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test on PostgreSQL: set ZTMESH_TEST_DATABASE_URL (tests/run-all.sh does)"
        );
        eprintln!(
            "SKIPPED audit_on_postgresql: ZTMESH_TEST_DATABASE_URL is not set (tests/run-all.sh sets it)"
        );
        return;
    };
    let url = ztmesh_e2e::fresh_postgres_database(&url).await;
    audit_scenario(TestServer::start(Some(url)).await).await;
}

async fn audit_scenario(server: TestServer) {
    let owner = server.admin_key().to_owned();
    let auditor = server.api_key_as(&owner, "auditor", 0).await.unwrap();
    let auditor_id = auditor
        .trim_start_matches("ztk_")
        .split('.')
        .next()
        .unwrap()
        .to_owned();

    // The auditor follows the log: recent records first...
    let mut stream = server
        .admin()
        .watch_audit(server.request_as(
            &auditor,
            v1::WatchAuditRequest {
                backlog: 5,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let bootstrap = next_record(&mut stream, "api_key.create").await;
    assert_eq!(
        (bootstrap.actor.as_str(), bootstrap.role.as_str()),
        ("server", "system")
    );
    let created = next_record(&mut stream, "api_key.create").await;
    assert_eq!(
        created.object, auditor_id,
        "the backlog holds the key's creation"
    );
    assert!(
        created.after.contains("\"role\":\"auditor\""),
        "{created:?}"
    );

    // ...then new ones as they are written.
    server.settings(Some(true), None).await;
    let settings = next_record(&mut stream, "settings.update").await;
    assert!(settings.actor.starts_with("apikey:"), "{settings:?}");
    assert_eq!(settings.role, "owner");
    assert!(settings.source.starts_with("127.0.0.1:"), "{settings:?}");
    assert!(
        settings.before.contains("\"device_approval\":false"),
        "{settings:?}"
    );
    assert!(
        settings.after.contains("\"device_approval\":true"),
        "{settings:?}"
    );

    // A call the role table refuses is a record too.
    let err = server
        .admin()
        .set_policy(server.request_as(&auditor, v1::SetPolicyRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let denied = next_record(&mut stream, "admin.denied").await;
    assert_eq!(
        (
            denied.actor.as_str(),
            denied.role.as_str(),
            denied.object.as_str()
        ),
        (
            format!("apikey:{auditor_id}").as_str(),
            "auditor",
            "SetPolicy"
        )
    );

    // Enrollment by join token and by login.
    server.settings(Some(false), None).await;
    let token = server.token(&["web"], false, 0).await;
    let web = TestAgent::join(&token, "web").await.unwrap();
    let enrolled = next_record(&mut stream, "device.enroll").await;
    assert_eq!(
        (enrolled.object.as_str(), enrolled.role.as_str()),
        ("web", "join-token")
    );
    assert!(enrolled.actor.starts_with("token:"), "{enrolled:?}");
    assert!(enrolled.source.starts_with("127.0.0.1:"), "{enrolled:?}");
    assert!(
        enrolled.after.contains("\"tags\":[\"web\"]"),
        "{enrolled:?}"
    );

    let password = "correct horse battery staple";
    let totp = server.create_user("alice@example.com", &[], password).await;
    let laptop = TestAgent::login(
        &server,
        "alice@example.com",
        password,
        &totp_now(&totp),
        "laptop",
        FakePosture::compliant(),
    )
    .await
    .unwrap();
    let login = next_record(&mut stream, "login").await;
    assert_eq!(
        (
            login.actor.as_str(),
            login.role.as_str(),
            login.object.as_str()
        ),
        ("user:alice@example.com", "user", "alice@example.com")
    );
    assert!(login.source.starts_with("127.0.0.1:"), "{login:?}");

    // ListAudit filters by actor (a bare key id works) and action.
    let listed = server
        .admin()
        .list_audit(server.request_as(
            &auditor,
            v1::ListAuditRequest {
                actor: auditor_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].action, "admin.denied");
    let enrollments = server
        .admin()
        .list_audit(server.request(v1::ListAuditRequest {
            action: "device.enroll".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .records;
    let names: Vec<&str> = enrollments.iter().map(|r| r.object.as_str()).collect();
    assert_eq!(names, ["web", "laptop"]);

    // Revoking the watching key ends its stream.
    server
        .admin()
        .revoke_api_key(server.request(v1::RevokeApiKeyRequest {
            id: auditor_id.clone(),
        }))
        .await
        .unwrap();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .expect("the stream of a revoked key ends within seconds")
    .expect("with a status");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{}", ended.message());

    web.stop().await;
    laptop.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn refused_enrollments_are_audited_without_the_secret() {
    let server = TestServer::start(None).await;
    let token = server.token(&["web"], false, 0).await;
    let _first = TestAgent::join(&token, "web-1").await.unwrap();
    let second = TestAgent::join(&token, "web-2").await;
    assert!(second.is_err(), "a single-use token works once");
    let refused = server
        .admin()
        .list_audit(server.request(v1::ListAuditRequest {
            action: "device.enroll_failed".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(refused.len(), 1, "{refused:#?}");
    let record = &refused[0];
    assert_eq!(record.object, "web-2");
    assert_eq!(record.role, "join-token");
    assert!(record.actor.starts_with("token:"), "{record:?}");
    assert!(record.after.contains("refused"), "{record:?}");
    assert!(!record.source.is_empty(), "{record:?}");
    let secret = token.rsplit('.').next().unwrap_or_default();
    for field in [&record.actor, &record.after, &record.object] {
        assert!(
            !field.contains(secret),
            "the token secret leaked into {field}"
        );
    }
}
