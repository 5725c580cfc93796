//! The catalogue of events Tern emits: name, meaning and data type of each.
//!
//! Names are dotted, role first (`gs`, `ns`, `js`, `as`, `is`), then the subject, then what
//! happened. Every definition is a constant typed by its data message, so that
//! [`Event::with_data`](crate::Event::with_data) only accepts that message. [`catalogue`]
//! lists them all, for documentation and `ternctl`.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use tern_api::v3;

/// The type of an event's data: a protobuf message (anything with a `prost::Name`),
/// [`Fields`], or [`NoData`].
pub trait EventData {
    /// Full protobuf name of the data message, e.g. `tern.v3.UplinkMessage`; empty for none.
    fn data_type() -> String;
}

impl<M: prost::Name> EventData for M {
    fn data_type() -> String {
        M::full_name()
    }
}

/// Marks a definition whose events carry no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoData;

impl EventData for NoData {
    fn data_type() -> String {
        String::new()
    }
}

/// Free-form event data: a JSON object carried as a `google.protobuf.Struct`, for events
/// whose details have no message of their own (MAC commands).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Fields(serde_json::Map<String, serde_json::Value>);

impl Fields {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) one field.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// The fields.
    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }
}

impl From<serde_json::Map<String, serde_json::Value>> for Fields {
    fn from(map: serde_json::Map<String, serde_json::Value>) -> Self {
        Self(map)
    }
}

impl EventData for Fields {
    fn data_type() -> String {
        "google.protobuf.Struct".to_owned()
    }
}

/// The definition of one kind of event; `M` is the type of its data.
pub struct Definition<M = NoData> {
    name: &'static str,
    description: &'static str,
    /// Position in the catalogue, [`UNINDEXED`] for definitions made outside it: the bus
    /// answers [`EventBus::wants`](crate::EventBus::wants) for catalogued events from one
    /// bit, without looking at the subscriptions.
    index: u16,
    // `fn() -> M`: the definition neither owns nor borrows an M, and stays Send + Sync.
    data: PhantomData<fn() -> M>,
}

impl<M> Definition<M> {
    /// Defines an event. `name` is dotted, role first; `description` is one sentence.
    pub const fn new(name: &'static str, description: &'static str) -> Self {
        Self::indexed(name, description, UNINDEXED)
    }

    const fn indexed(name: &'static str, description: &'static str, index: u16) -> Self {
        Self {
            name,
            description,
            index,
            data: PhantomData,
        }
    }

    /// The position of the definition in [`CATALOGUE_NAMES`], if it is catalogued.
    pub(crate) const fn index(&self) -> Option<usize> {
        if self.index == UNINDEXED {
            None
        } else {
            Some(self.index as usize)
        }
    }

    /// The event name, e.g. `ns.up.data.receive`.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// What the event means.
    pub const fn description(&self) -> &'static str {
        self.description
    }
}

impl<M: EventData> Definition<M> {
    /// Full protobuf name of the data message; empty for events without data.
    pub fn data_type(&self) -> String {
        M::data_type()
    }

    /// The definition as plain data.
    pub fn info(&self) -> DefinitionInfo {
        DefinitionInfo {
            name: self.name,
            description: self.description,
            data_type: M::data_type(),
        }
    }
}

// Manual impls: derives would require M: Clone/Debug, which the marker does not need.
impl<M> Clone for Definition<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Definition<M> {}

impl<M> fmt::Debug for Definition<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Definition")
            .field("name", &self.name)
            .field("description", &self.description)
            .finish()
    }
}

/// A catalogue entry: a definition without its type parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefinitionInfo {
    /// The event name.
    pub name: &'static str,
    /// What the event means.
    pub description: &'static str,
    /// Full protobuf name of the data message; empty for events without data.
    pub data_type: String,
}

/// Looks an event up by name in the [`catalogue`].
pub fn lookup(name: &str) -> Option<DefinitionInfo> {
    catalogue().into_iter().find(|d| d.name == name)
}

/// The index of a definition made with [`Definition::new`], outside the catalogue.
const UNINDEXED: u16 = u16::MAX;

macro_rules! catalogue {
    ($($ident:ident: $data:ty = $name:literal, $description:literal;)*) => {
        /// The catalogue positions, one variant per definition, in catalogue order.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        enum Index {
            $($ident,)*
        }

        $(
            #[doc = concat!("`", $name, "`: ", $description)]
            pub const $ident: Definition<$data> =
                Definition::indexed($name, $description, Index::$ident as u16);
        )*

        /// The names of the catalogue, at the index of their definition.
        pub(crate) const CATALOGUE_NAMES: &[&str] = &[$($name),*];
        const _: () = assert!(CATALOGUE_NAMES.len() < UNINDEXED as usize);

        /// Every event Tern emits, grouped by role.
        pub fn catalogue() -> Vec<DefinitionInfo> {
            vec![$($ident.info()),*]
        }
    };
}

catalogue! {
    // Gateway Server.
    GS_GATEWAY_CONNECT: v3::GatewayConnectionEvent =
        "gs.gateway.connect", "A gateway connected to the Gateway Server.";
    GS_GATEWAY_DISCONNECT: v3::GatewayConnectionEvent =
        "gs.gateway.disconnect", "A gateway disconnected from the Gateway Server.";
    GS_GATEWAY_DOWNLINK_PATH_LOST: v3::GatewayConnectionEvent =
        "gs.gateway.downlink_path.lost",
        "A gateway still sends uplinks but can no longer receive downlinks (no recent PULL_DATA).";
    GS_STATUS_RECEIVE: v3::GatewayStatus =
        "gs.status.receive", "A gateway sent a status report.";
    GS_UP_RECEIVE: v3::UplinkMessage =
        "gs.up.receive", "A gateway received an uplink frame; the Gateway Server forwards it to the Network Server.";
    GS_UP_DROP: v3::ErrorDetails =
        "gs.up.drop", "The Gateway Server dropped an uplink frame; the data says why.";
    GS_DOWN_SEND: v3::DownlinkMessage =
        "gs.down.send", "The Gateway Server sent a downlink to a gateway for transmission.";
    GS_DOWN_SCHEDULE_FAIL: v3::ScheduleDownlinkFailure =
        "gs.down.schedule.fail", "No path and window could carry a downlink; the data gives each path's reason.";
    GS_DOWN_TX_SUCCESS: v3::TxAcknowledgment =
        "gs.down.tx.success", "A gateway acknowledged that it transmitted a downlink.";
    GS_DOWN_TX_FAIL: v3::TxAcknowledgment =
        "gs.down.tx.fail", "A gateway reported that it could not transmit a downlink.";

    // Network Server.
    NS_UP_DATA_RECEIVE: v3::UplinkMessage =
        "ns.up.data.receive", "The Network Server received a data uplink (after deduplication).";
    NS_UP_DATA_DROP: v3::ErrorDetails =
        "ns.up.data.drop", "The Network Server dropped a data uplink (unknown DevAddr, MIC, frame counter, ...); the data says why.";
    NS_UP_DATA_FORWARD: v3::ApplicationUp =
        "ns.up.data.forward", "The Network Server forwarded a data uplink to the Application Server.";
    NS_LINK_DROP: v3::ErrorDetails =
        "ns.link.drop", "The Network Server dropped unacknowledged messages for an application (outbox full or store failure); the data says which and why.";
    NS_UP_JOIN_RECEIVE: v3::UplinkMessage =
        "ns.up.join.receive", "The Network Server received a join-request.";
    NS_UP_JOIN_ACCEPT: v3::JoinRequest =
        "ns.up.join.accept", "The Join Server accepted a join-request; the data is the request with the new session's DevAddr and settings.";
    NS_UP_JOIN_REJECT: v3::ErrorDetails =
        "ns.up.join.reject", "A join-request was rejected; the data says why.";
    NS_DOWN_DATA_SCHEDULE: v3::DownlinkMessage =
        "ns.down.data.schedule", "The Network Server scheduled a data downlink on a Gateway Server.";
    NS_DOWN_DATA_SCHEDULE_FAIL: v3::ScheduleDownlinkFailure =
        "ns.down.data.schedule.fail", "The Network Server could not schedule a data downlink on any path.";
    NS_DOWN_JOIN_SCHEDULE: v3::DownlinkMessage =
        "ns.down.join.schedule", "The Network Server scheduled a join-accept on a Gateway Server.";
    NS_DOWN_JOIN_SCHEDULE_FAIL: v3::ScheduleDownlinkFailure =
        "ns.down.join.schedule.fail", "The Network Server could not schedule a join-accept on any path.";

    // Network Server: MAC commands. `request`/`answer` follow the command names (LinkCheckReq
    // comes from the device, LinkADRReq from the network); the data holds the command's fields.
    NS_MAC_RESET_INDICATION: Fields =
        "ns.mac.reset.indication", "An ABP device sent ResetInd (LoRaWAN 1.1).";
    NS_MAC_RESET_CONFIRMATION: Fields =
        "ns.mac.reset.confirmation", "The network answered ResetConf.";
    NS_MAC_LINK_CHECK_REQUEST: Fields =
        "ns.mac.link_check.request", "The device asked for a link check (LinkCheckReq).";
    NS_MAC_LINK_CHECK_ANSWER: Fields =
        "ns.mac.link_check.answer", "The network answered LinkCheckAns with the margin and gateway count.";
    NS_MAC_LINK_ADR_REQUEST: Fields =
        "ns.mac.link_adr.request", "The network sent LinkADRReq (data rate, TX power, channel mask, NbTrans).";
    NS_MAC_LINK_ADR_ANSWER: Fields =
        "ns.mac.link_adr.answer", "The device answered LinkADRAns; the data says which parts it accepted.";
    NS_MAC_DUTY_CYCLE_REQUEST: Fields =
        "ns.mac.duty_cycle.request", "The network sent DutyCycleReq.";
    NS_MAC_DUTY_CYCLE_ANSWER: Fields =
        "ns.mac.duty_cycle.answer", "The device answered DutyCycleAns.";
    NS_MAC_RX_PARAM_SETUP_REQUEST: Fields =
        "ns.mac.rx_param_setup.request", "The network sent RXParamSetupReq (RX1 offset, RX2 data rate and frequency).";
    NS_MAC_RX_PARAM_SETUP_ANSWER: Fields =
        "ns.mac.rx_param_setup.answer", "The device answered RXParamSetupAns; the data says which parts it accepted.";
    NS_MAC_DEV_STATUS_REQUEST: Fields =
        "ns.mac.dev_status.request", "The network sent DevStatusReq.";
    NS_MAC_DEV_STATUS_ANSWER: Fields =
        "ns.mac.dev_status.answer", "The device answered DevStatusAns with its battery level and margin.";
    NS_MAC_NEW_CHANNEL_REQUEST: Fields =
        "ns.mac.new_channel.request", "The network sent NewChannelReq.";
    NS_MAC_NEW_CHANNEL_ANSWER: Fields =
        "ns.mac.new_channel.answer", "The device answered NewChannelAns; the data says which parts it accepted.";
    NS_MAC_RX_TIMING_SETUP_REQUEST: Fields =
        "ns.mac.rx_timing_setup.request", "The network sent RXTimingSetupReq (RX1 delay).";
    NS_MAC_RX_TIMING_SETUP_ANSWER: Fields =
        "ns.mac.rx_timing_setup.answer", "The device answered RXTimingSetupAns.";
    NS_MAC_TX_PARAM_SETUP_REQUEST: Fields =
        "ns.mac.tx_param_setup.request", "The network sent TxParamSetupReq (dwell time, max EIRP).";
    NS_MAC_TX_PARAM_SETUP_ANSWER: Fields =
        "ns.mac.tx_param_setup.answer", "The device answered TxParamSetupAns.";
    NS_MAC_DL_CHANNEL_REQUEST: Fields =
        "ns.mac.dl_channel.request", "The network sent DlChannelReq.";
    NS_MAC_DL_CHANNEL_ANSWER: Fields =
        "ns.mac.dl_channel.answer", "The device answered DlChannelAns; the data says which parts it accepted.";
    NS_MAC_REKEY_INDICATION: Fields =
        "ns.mac.rekey.indication", "An OTAA device sent RekeyInd (LoRaWAN 1.1).";
    NS_MAC_REKEY_CONFIRMATION: Fields =
        "ns.mac.rekey.confirmation", "The network answered RekeyConf.";
    NS_MAC_ADR_PARAM_SETUP_REQUEST: Fields =
        "ns.mac.adr_param_setup.request", "The network sent ADRParamSetupReq (ADR ACK limit and delay).";
    NS_MAC_ADR_PARAM_SETUP_ANSWER: Fields =
        "ns.mac.adr_param_setup.answer", "The device answered ADRParamSetupAns.";
    NS_MAC_DEVICE_TIME_REQUEST: Fields =
        "ns.mac.device_time.request", "The device asked for the network time (DeviceTimeReq).";
    NS_MAC_DEVICE_TIME_ANSWER: Fields =
        "ns.mac.device_time.answer", "The network answered DeviceTimeAns with the GPS time.";
    NS_MAC_FORCE_REJOIN_REQUEST: Fields =
        "ns.mac.force_rejoin.request", "The network sent ForceRejoinReq.";
    NS_MAC_REJOIN_PARAM_SETUP_REQUEST: Fields =
        "ns.mac.rejoin_param_setup.request", "The network sent RejoinParamSetupReq.";
    NS_MAC_REJOIN_PARAM_SETUP_ANSWER: Fields =
        "ns.mac.rejoin_param_setup.answer", "The device answered RejoinParamSetupAns.";
    NS_MAC_PING_SLOT_INFO_REQUEST: Fields =
        "ns.mac.ping_slot_info.request", "The device announced its class B ping slot periodicity (PingSlotInfoReq).";
    NS_MAC_PING_SLOT_INFO_ANSWER: Fields =
        "ns.mac.ping_slot_info.answer", "The network answered PingSlotInfoAns.";
    NS_MAC_PING_SLOT_CHANNEL_REQUEST: Fields =
        "ns.mac.ping_slot_channel.request", "The network sent PingSlotChannelReq.";
    NS_MAC_PING_SLOT_CHANNEL_ANSWER: Fields =
        "ns.mac.ping_slot_channel.answer", "The device answered PingSlotChannelAns; the data says which parts it accepted.";
    NS_MAC_BEACON_FREQ_REQUEST: Fields =
        "ns.mac.beacon_freq.request", "The network sent BeaconFreqReq.";
    NS_MAC_BEACON_FREQ_ANSWER: Fields =
        "ns.mac.beacon_freq.answer", "The device answered BeaconFreqAns.";
    NS_MAC_DEVICE_MODE_INDICATION: Fields =
        "ns.mac.device_mode.indication", "The device asked to switch class (DeviceModeInd, LoRaWAN 1.1).";
    NS_MAC_DEVICE_MODE_CONFIRMATION: Fields =
        "ns.mac.device_mode.confirmation", "The network answered DeviceModeConf.";

    // Join Server.
    JS_JOIN_ACCEPT: v3::JoinRequest =
        "js.join.accept", "The Join Server accepted a join-request and derived a new session.";
    JS_JOIN_REJECT: v3::ErrorDetails =
        "js.join.reject", "The Join Server rejected a join-request (unknown device, MIC mismatch, DevNonce reused); the data says why.";

    // Application Server.
    AS_UP_DATA_FORWARD: v3::ApplicationUp =
        "as.up.data.forward", "The Application Server decrypted and decoded an uplink and forwarded it to the application's integrations.";
    AS_UP_DATA_DECODE_FAIL: v3::ErrorDetails =
        "as.up.data.decode.fail", "The uplink payload formatter failed; the data says why.";
    AS_UP_JOIN_FORWARD: v3::ApplicationUp =
        "as.up.join.forward", "The Application Server forwarded a join-accept (new session) to the application's integrations.";
    AS_DOWN_DATA_RECEIVE: v3::ApplicationDownlink =
        "as.down.data.receive", "The Application Server received a downlink from the application.";
    AS_DOWN_DATA_FORWARD: v3::ApplicationDownlink =
        "as.down.data.forward", "The Application Server encrypted a downlink and queued it on the Network Server.";
    AS_DOWN_QUEUE_INVALIDATED: v3::ApplicationInvalidatedDownlinks =
        "as.down.queue.invalidated", "The device's queued downlinks must be re-encrypted (new session, or a counter taken by the Network Server).";

    // Identity Server. Create and update carry the entity (secrets removed), delete its
    // identifiers.
    IS_USER_CREATE: v3::User = "is.user.create", "A user was created.";
    IS_USER_UPDATE: v3::User = "is.user.update", "A user was updated.";
    IS_USER_DELETE: v3::UserIdentifiers = "is.user.delete", "A user was deleted.";
    IS_ORGANIZATION_CREATE: v3::Organization =
        "is.organization.create", "An organization was created.";
    IS_ORGANIZATION_UPDATE: v3::Organization =
        "is.organization.update", "An organization was updated.";
    IS_ORGANIZATION_DELETE: v3::OrganizationIdentifiers =
        "is.organization.delete", "An organization was deleted.";
    IS_APPLICATION_CREATE: v3::Application =
        "is.application.create", "An application was created.";
    IS_APPLICATION_UPDATE: v3::Application =
        "is.application.update", "An application was updated.";
    IS_APPLICATION_DELETE: v3::ApplicationIdentifiers =
        "is.application.delete", "An application was deleted.";
    IS_GATEWAY_CREATE: v3::Gateway = "is.gateway.create", "A gateway was registered.";
    IS_GATEWAY_UPDATE: v3::Gateway = "is.gateway.update", "A gateway was updated.";
    IS_GATEWAY_DELETE: v3::GatewayIdentifiers = "is.gateway.delete", "A gateway was deleted.";
    IS_END_DEVICE_CREATE: v3::EndDevice = "is.end_device.create", "An end device was registered.";
    IS_END_DEVICE_UPDATE: v3::EndDevice = "is.end_device.update", "An end device was updated.";
    IS_END_DEVICE_DELETE: v3::EndDeviceIdentifiers =
        "is.end_device.delete", "An end device was deleted.";
    IS_API_KEY_CREATE: v3::ApiKey =
        "is.api_key.create", "An API key was created for the entity (the secret is never in the event).";
    IS_API_KEY_UPDATE: v3::ApiKey = "is.api_key.update", "An API key's name, rights or expiry changed.";
    IS_API_KEY_DELETE: v3::ApiKey = "is.api_key.delete", "An API key was revoked.";
}
