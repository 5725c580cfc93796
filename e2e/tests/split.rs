//! Scenario 2: the split deployment. `tern start is gs ns js` and `tern start as` run as two
//! processes; the AS links with an application API key and unwraps AppSKeys with a KEK the
//! network never has, and the network's data never holds the clear AppSKey.

use tern_e2e::flow::{APP, bootstrap_value, files, provision, set_formatter, traffic};
use tern_e2e::{Server, temp_dir};

#[tokio::test(flavor = "multi_thread")]
async fn external_application_server_links_with_an_api_key_and_keeps_the_app_s_key() {
    // The AS operator's key-encryption key: the JS wraps AppSKeys under it, the NS never has it.
    const AS_KEK: &str = "00112233445566778899AABBCCDDEEFF";
    let dir = temp_dir("split-config");
    let network = dir.join("network.toml");
    std::fs::write(
        &network,
        format!(
            "[join-server]\nas-kek-label = \"as:operator-b\"\n\
             [join-server.keks]\n\"as:operator-b\" = \"{AS_KEK}\"\n"
        ),
    )
    .unwrap();
    let mut network = Server::start(
        "split-network",
        &["is", "gs", "ns", "js"],
        &[
            ("TERN_CONFIG", network.to_str().unwrap()),
            ("TERN_NETWORK_SERVER__DEDUP_WINDOW", "100ms"),
        ],
    );
    network.wait_ready().await;
    let admin_key = bootstrap_value(&network, "api-key");
    let app_key = provision(&network, &admin_key, true).await;

    // The other operator's AS: no cluster key, only the application's API key.
    let external = dir.join("external.toml");
    let grpc = format!("http://{}", network.grpc);
    std::fs::write(
        &external,
        format!(
            "[cluster]\nnetwork-server = \"{grpc}\"\nidentity-server = \"{grpc}\"\n\
             [application-server]\nkek-label = \"as:operator-b\"\n\
             network-server-api-key = \"{app_key}\"\n\
             [application-server.keks]\n\"as:operator-b\" = \"{AS_KEK}\"\n\
             [application-server.link]\napplications = [\"{APP}\"]\n"
        ),
    )
    .unwrap();
    let mut application = Server::start(
        "split-as",
        &["as"],
        &[("TERN_CONFIG", external.to_str().unwrap())],
    );
    application.wait_ready().await;
    set_formatter(&application, &admin_key).await;

    let device = traffic(&network, &application, &app_key).await;

    // The network's data (store, key files) never holds the clear AppSKey.
    let app_s_key = device.session().unwrap().keys.app_s_key().0;
    let hex_upper = hex::encode_upper(app_s_key);
    let hex_lower = hex::encode(app_s_key);
    for file in files(&network.data_dir) {
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !bytes.windows(16).any(|w| w == app_s_key)
                && !text.contains(&hex_upper)
                && !text.contains(&hex_lower),
            "{} holds the clear AppSKey",
            file.display()
        );
    }
    drop(application);
    drop(network);
    let _ = std::fs::remove_dir_all(&dir);
}
