//! The NS end of the link, called in-process as a co-located AS does.

use tern_api::v3;
use tern_cluster::auth::{AuthInfo, Caller, Entity, RIGHT_APPLICATION_LINK};
use tern_cluster::links::{AsNs, BoxStream, LinkResult};
use tern_networkserver::link::LinkHub;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

fn start(apps: &[&str], all: bool, instance: &str) -> v3::LinkRequest {
    v3::LinkRequest {
        frame: Some(v3::link_request::Frame::Start(v3::LinkStart {
            application_ids: apps
                .iter()
                .map(|a| v3::ApplicationIdentifiers {
                    application_id: (*a).to_owned(),
                })
                .collect(),
            all_applications: all,
            instance_id: instance.to_owned(),
            acknowledged: Vec::new(),
        })),
    }
}

/// Opens a link; the sender keeps the AS side open.
async fn open(
    hub: &LinkHub,
    caller: Caller,
    first: v3::LinkRequest,
) -> (
    mpsc::Sender<LinkResult<v3::LinkRequest>>,
    LinkResult<BoxStream<LinkResult<v3::LinkResponse>>>,
) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(Ok(first)).await.unwrap();
    let result = hub
        .link_application(caller, Box::pin(ReceiverStream::new(rx)))
        .await;
    (tx, result)
}

fn api_key(app: &str, rights: &[&str]) -> Caller {
    Caller::ApiKey(AuthInfo::new(
        Entity::Application(app.to_owned()),
        rights.iter().copied(),
    ))
}

#[tokio::test]
async fn an_api_key_links_its_own_application_only() {
    let hub = LinkHub::new();
    let (_tx, result) = open(
        &hub,
        api_key("app-1", &[RIGHT_APPLICATION_LINK]),
        start(&["app-1"], false, "as-a"),
    )
    .await;
    let mut responses = result.unwrap();
    let first = responses.next().await.unwrap().unwrap();
    let Some(v3::link_response::Frame::Established(established)) = first.frame else {
        panic!("{first:?}");
    };
    assert_eq!(established.application_ids[0].application_id, "app-1");
    assert_eq!(hub.linked_applications(), vec!["app-1".to_owned()]);

    let (_tx, result) = open(
        &hub,
        api_key("app-2", &[RIGHT_APPLICATION_LINK]),
        start(&["app-3"], false, "as-b"),
    )
    .await;
    let status = result.err().unwrap();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "API key of application `app-2` may not act on application `app-3`"
    );

    let (_tx, result) = open(
        &hub,
        api_key("app-3", &["application:info"]),
        start(&["app-3"], false, "as-b"),
    )
    .await;
    let status = result.err().unwrap();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status
            .message()
            .contains("lacks the right `application:link`")
    );

    let (_tx, result) = open(
        &hub,
        api_key("app-3", &[RIGHT_APPLICATION_LINK]),
        start(&[], true, "as-b"),
    )
    .await;
    assert_eq!(result.err().unwrap().code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn a_second_as_is_refused_naming_the_holder_until_the_first_leaves() {
    let hub = LinkHub::new();
    let (tx, result) = open(&hub, Caller::Cluster, start(&["app-1"], false, "as-a")).await;
    let mut first = result.unwrap();
    first.next().await.unwrap().unwrap();

    let (_tx2, result) = open(&hub, Caller::Cluster, start(&["app-1"], false, "as-b")).await;
    let status = result.err().unwrap();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "application \"app-1\" is already linked by Application Server instance \"as-a\""
    );

    // The first AS goes away: its link ends and the application is free again.
    drop(tx);
    assert!(first.next().await.is_none());
    let (_tx3, result) = open(&hub, Caller::Cluster, start(&["app-1"], false, "as-b")).await;
    result.unwrap().next().await.unwrap().unwrap();
    assert!(hub.is_linked("app-1"));
}

#[tokio::test]
async fn the_first_frame_must_be_a_valid_start() {
    let hub = LinkHub::new();
    let ack = v3::LinkRequest {
        frame: Some(v3::link_request::Frame::Ack(v3::LinkAck::default())),
    };
    let (_tx, result) = open(&hub, Caller::Cluster, ack).await;
    assert_eq!(result.err().unwrap().code(), tonic::Code::InvalidArgument);
    let (_tx, result) = open(&hub, Caller::Cluster, start(&[], false, "as")).await;
    assert_eq!(
        result.err().unwrap().message(),
        "LinkStart names no application"
    );
}

#[tokio::test]
async fn queue_operations_are_answered_on_the_link() {
    let hub = LinkHub::new();
    let (tx, result) = open(&hub, Caller::Cluster, start(&[], true, "as-a")).await;
    let mut responses = result.unwrap();
    responses.next().await.unwrap().unwrap();
    tx.send(Ok(v3::LinkRequest {
        frame: Some(v3::link_request::Frame::QueueOperation(
            v3::DownlinkQueueOperation {
                operation_id: 7,
                end_device_ids: Some(v3::EndDeviceIdentifiers {
                    device_id: "dev-1".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }))
    .await
    .unwrap();
    let answer = responses.next().await.unwrap().unwrap();
    let Some(v3::link_response::Frame::QueueResult(result)) = answer.frame else {
        panic!("{answer:?}");
    };
    assert_eq!(result.operation_id, 7);
    assert_eq!(result.error.unwrap().name, "unknown_session");
}
