//! Admin roles over real gRPC and TLS: every cell of the role table, API
//! key lifecycle rules, the audit log, health and reflection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod discovery;

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use ztmesh_e2e::TestServer;
use ztmesh_proto::v1;
use ztmesh_server::roles::{ADMIN_SERVICE, ROLE_TABLE, Role, RoleTable};

/// The Admin RPCs from the compiled descriptor: name -> server streaming.
fn admin_rpcs_from_descriptor() -> BTreeMap<String, bool> {
    let set = prost_types::FileDescriptorSet::decode(ztmesh_proto::FILE_DESCRIPTOR_SET).unwrap();
    let service = set
        .file
        .iter()
        .filter(|f| f.package() == "ztmesh.v1")
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "Admin")
        .expect("ztmesh.v1.Admin in the descriptor");
    service
        .method
        .iter()
        .map(|m| (m.name().to_owned(), m.server_streaming()))
        .collect()
}

/// Calls `rpc` with an empty request message (every field at its default)
/// and `api_key`; returns the status code (Ok for success).
async fn call_with_empty_request(
    server: &TestServer,
    api_key: &str,
    rpc: &str,
    streaming: bool,
) -> (Code, String) {
    let mut grpc = tonic::client::Grpc::new(server.channel());
    grpc.ready().await.unwrap();
    let path = PathAndQuery::try_from(format!("/{ADMIN_SERVICE}/{rpc}")).unwrap();
    // `()` encodes to zero bytes (the default message) and decodes any
    // message by skipping its fields.
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let request = server.request_as(api_key, ());
    let result = if streaming {
        grpc.server_streaming(request, path, codec)
            .await
            .map(|_| ())
    } else {
        grpc.unary(request, path, codec).await.map(|_| ())
    };
    match result {
        Ok(()) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// Keys of every role; the owner key is the server's bootstrap key.
async fn keys_by_role(server: &TestServer) -> BTreeMap<Role, String> {
    let owner = server.admin_key().to_owned();
    let mut keys = BTreeMap::from([(Role::Owner, owner.clone())]);
    for role in [Role::Admin, Role::PolicyEditor, Role::Auditor] {
        let key = server.api_key_as(&owner, role.as_str(), 0).await.unwrap();
        keys.insert(role, key);
    }
    keys
}

#[tokio::test]
async fn every_rpc_and_role_is_enforced_as_the_table_says() {
    let rpcs = admin_rpcs_from_descriptor();
    let table = RoleTable::parse(ROLE_TABLE).unwrap();
    // Every RPC of the service is in the table, and the table names no
    // RPC that does not exist.
    table
        .check_against(&rpcs.keys().cloned().collect())
        .unwrap();
    assert_eq!(
        table.rpcs().count(),
        rpcs.len(),
        "one row per RPC, no extra rows"
    );

    let server = TestServer::start(None).await;
    let keys = keys_by_role(&server).await;
    let mut wrong = Vec::new();
    let mut cells = 0;
    for (rpc, streaming) in &rpcs {
        for role in Role::ALL {
            let (code, message) =
                call_with_empty_request(&server, &keys[&role], rpc, *streaming).await;
            cells += 1;
            let allowed = table.allows(rpc, role);
            let refused = code == Code::PermissionDenied;
            if allowed == refused || code == Code::Unauthenticated {
                wrong.push(format!(
                    "{rpc} as {role}: table says {}, server answered {code:?} {message:?}",
                    if allowed { "yes" } else { "no" }
                ));
            }
            if refused {
                assert!(
                    message.contains(role.as_str()) && message.contains(rpc),
                    "the refusal names the role and the RPC: {message}"
                );
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "cells that disagree:\n{}",
        wrong.join("\n")
    );
    assert_eq!(cells, rpcs.len() * 4);
    server.stop().await;
}

async fn revoke(server: &TestServer, key: &str, id: String) -> Result<v1::ApiKey, tonic::Status> {
    server
        .admin()
        .revoke_api_key(server.request_as(key, v1::RevokeApiKeyRequest { id }))
        .await
        .map(|r| r.into_inner().key.unwrap())
}

#[tokio::test]
async fn api_key_rules() {
    let server = TestServer::start(None).await;
    let owner = server.admin_key().to_owned();
    let admin = server.api_key_as(&owner, "admin", 0).await.unwrap();

    // An admin manages only less powerful roles.
    for role in ["owner", "admin"] {
        let err = server.api_key_as(&admin, role, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "admin creating {role}");
        assert!(err.message().contains("ask an owner"), "{}", err.message());
    }
    let auditor = server.api_key_as(&admin, "auditor", 0).await.unwrap();
    let err = server.api_key_as(&owner, "superuser", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("owner, admin, policy-editor or auditor")
    );

    // Listings never carry secrets or hashes.
    let listed = server
        .admin()
        .list_api_keys(server.request_as(&auditor, v1::ListApiKeysRequest { all: true }))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(listed.len(), 3);
    let text = format!("{listed:?}");
    for key in [&owner, &admin, &auditor] {
        let (_, secret) = key.split_once('.').unwrap();
        assert!(!text.contains(secret), "a listing shows a secret");
    }
    let id_of = |key: &str| {
        key.trim_start_matches("ztk_")
            .split('.')
            .next()
            .unwrap()
            .to_owned()
    };

    // An expiring key cannot create a key that outlives it.
    let short = server.api_key_as(&owner, "admin", 3600).await.unwrap();
    let err = server.api_key_as(&short, "auditor", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("expire no later"),
        "{}",
        err.message()
    );
    server.api_key_as(&short, "auditor", 600).await.unwrap();

    // An admin cannot revoke an owner key; the owner revokes the auditor.
    let err = revoke(&server, &admin, id_of(&owner)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    revoke(&server, &admin, id_of(&auditor)).await.unwrap();
    let err = server
        .admin()
        .list_devices(server.request_as(&auditor, v1::ListDevicesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("was revoked"), "{}", err.message());

    // The last owner key stays.
    let err = revoke(&server, &owner, id_of(&owner)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("last usable owner key"),
        "{}",
        err.message()
    );
    let second_owner = server.api_key_as(&owner, "owner", 0).await.unwrap();
    revoke(&server, &second_owner, id_of(&owner)).await.unwrap();

    // Expired keys are refused on the next call, saying what to do.
    let brief = server
        .api_key_as(&second_owner, "auditor", 1)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = server
        .admin()
        .list_devices(server.request_as(&brief, v1::ListDevicesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("expired") && err.message().contains("api-keys create"),
        "{}",
        err.message()
    );

    // Without a key, or with a wrong secret: Unauthenticated.
    let wrong_secret = format!("ztk_{}.not-the-secret", id_of(&second_owner));
    for key in ["", "garbage", wrong_secret.as_str()] {
        let err = server
            .admin()
            .list_devices(server.request_as(key, v1::ListDevicesRequest {}))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "key {key:?}");
    }
    server.stop().await;
}
