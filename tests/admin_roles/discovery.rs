//! What generic gRPC tools rely on, over TLS: server reflection (v1 and
//! v1alpha) lists and describes the Admin service, and the standard health
//! service reports SERVING.

use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use ztmesh_e2e::TestServer;

async fn reflect(server: &TestServer, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(server.channel());
    let outbound = tokio_stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    }]);
    let mut responses = client
        .server_reflection_info(outbound)
        .await
        .unwrap()
        .into_inner();
    responses
        .next()
        .await
        .expect("a reflection response")
        .unwrap()
        .message_response
        .expect("a message")
}

#[tokio::test]
async fn reflection_and_health_work_for_generic_clients() {
    let server = TestServer::start(None).await;

    let MessageResponse::ListServicesResponse(list) =
        reflect(&server, MessageRequest::ListServices(String::new())).await
    else {
        panic!("ListServices answered something else");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "ztmesh.v1.Admin",
        "ztmesh.v1.Control",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    // A client can fetch the schema it needs to build calls.
    let MessageResponse::FileDescriptorResponse(files) = reflect(
        &server,
        MessageRequest::FileContainingSymbol("ztmesh.v1.Admin".into()),
    )
    .await
    else {
        panic!("FileContainingSymbol answered something else");
    };
    assert!(!files.file_descriptor_proto.is_empty());

    // v1alpha too (Python's grpcio reflection client speaks only that).
    let mut alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            server.channel(),
        );
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let answer = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert!(format!("{answer:?}").contains("ztmesh.v1.Admin"));

    let mut health = HealthClient::new(server.channel());
    for service in ["", "ztmesh.v1.Admin", "ztmesh.v1.Control"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    server.stop().await;
}
