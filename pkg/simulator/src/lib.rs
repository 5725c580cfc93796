//! Simulated LoRaWAN end devices and gateways, over real sockets.
//!
//! - [`device::Device`]: an end device, LoRaWAN 1.0.x or 1.1, OTAA or ABP: builds
//!   join-requests and data uplinks, checks and decrypts join-accepts and data downlinks
//!   (MIC, frame counters, FOpts, MAC commands).
//! - [`udp::UdpGateway`]: a gateway speaking the Semtech UDP packet forwarder protocol
//!   (PUSH_DATA/PUSH_ACK, PULL_DATA/PULL_ACK, PULL_RESP/TX_ACK) with a concentrator clock,
//!   so a test can tell whether a downlink reached it in time for its receive window.
//! - [`station::Station`]: a LoRa Basics Station speaking the LNS protocol over WebSocket
//!   (discovery, `router_config`, `jreq`/`updf`, `dnmsg`/`dntxed`, `timesync`).
//!
//! - [`mac::MacResponder`]: a device's radio settings and its answers to MAC commands.
//! - [`runner::SimulatedDevice`]: a device on the air through one or more gateways, with
//!   RX1/RX2 (class A) and continuous (class C) reception and a step log.
//!
//! The end-to-end tests, the benchmarks and `ternctl simulate` drive Tern with these.

#![warn(missing_docs)]

pub mod device;
pub mod mac;
pub mod runner;
pub mod semtech;
pub mod station;
pub mod udp;

pub use device::{Device, DeviceConfig, Downlink, Keys, Uplink, Version};
pub use mac::{MacResponder, RadioState, Reject};
pub use runner::{DeviceClass, SavedDevice, SimGateway, SimulatedDevice, Step, Window};
pub use udp::{ReceivedDownlink, RxInfo, TxAckMode, UdpGateway, UdpGatewayConfig};

/// Why a simulated device or gateway could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A socket error.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer in time.
    #[error("no {0} in time")]
    Timeout(&'static str),
    /// The simulated gateway stopped.
    #[error("the simulated gateway stopped")]
    Closed,
    /// The server sent something the protocol does not allow.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A frame could not be decoded.
    #[error("frame: {0}")]
    Decode(#[from] lorawan::phy::DecodeError),
    /// A frame could not be encoded.
    #[error("frame: {0}")]
    Encode(#[from] lorawan::phy::EncodeError),
    /// MAC commands could not be encoded or decoded.
    #[error("MAC commands: {0}")]
    Mac(#[from] lorawan::MacError),
    /// A crypto operation failed.
    #[error("crypto: {0}")]
    Crypto(#[from] lorawan::CryptoError),
    /// The MIC of a received frame is wrong.
    #[error("{0}: MIC mismatch")]
    MicMismatch(&'static str),
    /// A downlink with a frame counter already seen.
    #[error("downlink FCnt {f_cnt} is not above the last one received")]
    Replay {
        /// The reconstructed counter.
        f_cnt: u32,
    },
    /// A downlink for another DevAddr.
    #[error("downlink for DevAddr {0}, not this device")]
    OtherDevice(lorawan::DevAddr),
    /// The device has no session yet.
    #[error("the device has not joined")]
    NotJoined,
    /// A join-accept without a join-request before it.
    #[error("no join-request was sent")]
    NoJoinRequest,
    /// A key the operation needs is not configured.
    #[error("the device has no {0}")]
    MissingKey(&'static str),
    /// A frame of an unexpected kind.
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
}
