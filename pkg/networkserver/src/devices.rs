//! The in-memory device table: every device with a session, indexed by DevAddr (current and
//! pending sessions) and by `application_id/device_id`, so that matching an uplink is one
//! hash lookup plus the MICs. Sharded, so that no lock is global on the hot path.
//!
//! Each device is held packed ([`PackedDevice`]: the record encoded, the session keys in
//! clear) and decoded by its lock: a decoded record costs several times its encoding, and
//! the table holds every device with a session (`examples/memory.rs` measures it).
//!
//! Several Network Servers may share one store: the table is then a cache that `shared`
//! fills on a miss and refreshes when another instance moved a device on.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use lorawan::crypto::{self, FOptsCounterVariant};
use lorawan::{Aes128Key, DevAddr, Direction, MType, PhyPayload};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prost::Message;
use tern_api::v3;
use tern_store::NsDeviceRecord;

/// Shards of each index.
const SHARDS: usize = 64;

/// NS-private state of a device, kept in `NsDeviceRecord.state`.
#[derive(Clone, PartialEq, Message)]
pub struct NsState {
    /// Whether the current session received an uplink (else any first FCnt is accepted).
    #[prost(bool, tag = "1")]
    pub f_cnt_up_seen: bool,
    /// The next NFCntDown (1.1) or FCntDown (1.0.x) to use.
    #[prost(uint32, tag = "2")]
    pub next_n_f_cnt_down: u32,
    /// The next AFCntDown the Application Server may encrypt with (1.1; 1.0.x shares the
    /// counter with `next_n_f_cnt_down`): past every queued item.
    #[prost(uint32, tag = "3")]
    pub next_a_f_cnt_down: u32,
    /// The FCnt of the last confirmed downlink (1.1 ConfFCnt of the acknowledging uplink).
    #[prost(uint32, tag = "4")]
    pub last_conf_f_cnt_down: u32,
    /// The confirmed application downlink waiting for its ACK.
    #[prost(message, optional, tag = "5")]
    pub confirmed: Option<v3::ApplicationDownlink>,
    /// Transmissions of `confirmed` so far.
    #[prost(uint32, tag = "6")]
    pub confirmed_attempts: u32,
    /// The tern-mac state.
    #[prost(bytes = "vec", tag = "7")]
    pub mac: Vec<u8>,
    /// Uplink tokens of the last uplink, best gateway first (class C paths).
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub last_uplink_tokens: Vec<Vec<u8>>,
    /// Frequency of the last uplink (Hz).
    #[prost(uint64, tag = "9")]
    pub last_uplink_frequency: u64,
    /// Data rate index of the last uplink.
    #[prost(uint32, tag = "10")]
    pub last_uplink_dr: u32,
    /// The PHYPayload of the last confirmed downlink sent while `confirmed` waits (resent
    /// on a retry with the same counter).
    #[prost(bytes = "vec", tag = "11")]
    pub confirmed_phy: Vec<u8>,
    /// Gateways of the last uplink, best first (class C paths).
    #[prost(message, repeated, tag = "12")]
    pub last_gateways: Vec<v3::GatewayIdentifiers>,
    /// The next AFCntDown not used on air yet (1.1).
    #[prost(uint32, tag = "13")]
    pub next_a_f_cnt_down_air: u32,
    /// The MAC state of the pending session (from its join-accept).
    #[prost(bytes = "vec", tag = "14")]
    pub pending_mac: Vec<u8>,
}

/// The network keys of one session, in clear (in memory only).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionCtx {
    /// The session's DevAddr.
    pub dev_addr: DevAddr,
    /// FNwkSIntKey (1.1) or NwkSKey (1.0.x).
    pub f_nwk_s_int_key: Aes128Key,
    /// SNwkSIntKey (1.1; the NwkSKey for 1.0.x).
    pub s_nwk_s_int_key: Aes128Key,
    /// NwkSEncKey (1.1; the NwkSKey for 1.0.x).
    pub nwk_s_enc_key: Aes128Key,
    /// LoRaWAN 1.1 session.
    pub v1_1: bool,
    /// The session key ID (empty for ABP).
    pub session_key_id: Vec<u8>,
}

/// Unwraps session keys with the NS's KEKs.
#[derive(Clone, Default)]
pub struct KeyVault {
    keks: HashMap<String, Aes128Key>,
}

impl KeyVault {
    /// A vault with these KEKs by label.
    pub fn new(keks: impl IntoIterator<Item = (String, Aes128Key)>) -> Self {
        Self {
            keks: keks.into_iter().collect(),
        }
    }

    /// The clear key of an envelope: unwrapped with the KEK of its label, or as it is.
    pub fn open(&self, field: &str, env: &v3::KeyEnvelope) -> Result<Aes128Key, String> {
        if env.is_wrapped() {
            let kek = self.keks.get(&env.kek_label).ok_or_else(|| {
                format!(
                    "{field}: wrapped with KEK {:?}, which this Network Server does not have",
                    env.kek_label
                )
            })?;
            return crypto::unwrap_key(kek, &env.encrypted_key)
                .map_err(|e| format!("{field}: cannot unwrap: {e}"));
        }
        env.clear_key()
            .map_err(|e| format!("{field}: {e}"))?
            .ok_or_else(|| format!("{field}: no key"))
    }

    /// The network keys of a session.
    pub fn session(&self, session: &v3::Session, v1_1: bool) -> Result<SessionCtx, String> {
        let dev_addr = tern_api::convert::dev_addr("session.dev_addr", &session.dev_addr)
            .map_err(|e| e.to_string())?
            .ok_or("session.dev_addr: required")?;
        let keys = session.keys.as_ref().ok_or("session.keys: required")?;
        let f = self.open(
            "session.keys.f_nwk_s_int_key",
            keys.f_nwk_s_int_key
                .as_ref()
                .ok_or("session.keys.f_nwk_s_int_key: required")?,
        )?;
        let (s, e) = if v1_1 {
            (
                self.open(
                    "session.keys.s_nwk_s_int_key",
                    keys.s_nwk_s_int_key
                        .as_ref()
                        .ok_or("session.keys.s_nwk_s_int_key: required for LoRaWAN 1.1")?,
                )?,
                self.open(
                    "session.keys.nwk_s_enc_key",
                    keys.nwk_s_enc_key
                        .as_ref()
                        .ok_or("session.keys.nwk_s_enc_key: required for LoRaWAN 1.1")?,
                )?,
            )
        } else {
            (f, f)
        };
        Ok(SessionCtx {
            dev_addr,
            f_nwk_s_int_key: f,
            s_nwk_s_int_key: s,
            nwk_s_enc_key: e,
            v1_1,
            session_key_id: keys.session_key_id.clone(),
        })
    }
}

/// One device, as the NS holds it in memory.
#[derive(Clone)]
pub struct Device {
    /// The stored record.
    pub record: NsDeviceRecord,
    /// Its version in the store.
    pub version: u64,
    /// The NS-private state (decoded `record.state`).
    pub state: NsState,
    /// The current session's keys.
    pub current: Option<SessionCtx>,
    /// The pending session's keys.
    pub pending: Option<SessionCtx>,
}

/// Which session an uplink verified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The current session.
    Current,
    /// The pending session (first uplink after a join).
    Pending,
}

/// An uplink that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The session.
    pub which: Which,
    /// The full 32-bit FCnt.
    pub f_cnt: u32,
    /// The same FCnt as the last accepted uplink: a retransmission.
    pub retransmission: bool,
}

/// Why an uplink did not verify against a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// No session's MIC verified.
    Mic,
    /// The MIC verified with a counter at or below the last accepted one.
    Replay,
    /// The counter jumped further than MAX_FCNT_GAP (1.0.x).
    Gap,
}

impl Mismatch {
    /// The drop reason label.
    pub fn reason(self) -> &'static str {
        match self {
            Mismatch::Mic => "mic_mismatch",
            Mismatch::Replay => "f_cnt_replay",
            Mismatch::Gap => "f_cnt_gap",
        }
    }
}

/// What the MIC of a 1.1 uplink covers besides the frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct TxParams {
    /// Data rate index of the uplink.
    pub dr: u8,
    /// Channel index of the uplink.
    pub ch: u8,
}

impl Device {
    /// A device from its stored record; fails when the record's keys cannot be opened.
    pub fn load(record: NsDeviceRecord, version: u64, vault: &KeyVault) -> Result<Self, String> {
        let state = NsState::decode(record.state.as_slice())
            .map_err(|e| format!("state: does not decode: {e}"))?;
        let v1_1 = record
            .device
            .as_ref()
            .is_some_and(|d| d.lorawan_version == v3::MacVersion::MacV11 as i32);
        let current = match record.device.as_ref().and_then(|d| d.session.as_ref()) {
            Some(s) => Some(vault.session(s, v1_1)?),
            None => None,
        };
        let pending = match record.pending_session.as_ref() {
            Some(s) => Some(vault.session(s, v1_1)?),
            None => None,
        };
        Ok(Self {
            record,
            version,
            state,
            current,
            pending,
        })
    }

    /// `application_id/device_id`.
    pub fn key(&self) -> String {
        let ids = self.ids();
        format!(
            "{}/{}",
            ids.application_ids
                .as_ref()
                .map(|a| a.application_id.as_str())
                .unwrap_or(""),
            ids.device_id
        )
    }

    /// The device's identifiers.
    pub fn ids(&self) -> v3::EndDeviceIdentifiers {
        self.record
            .device
            .as_ref()
            .and_then(|d| d.ids.clone())
            .unwrap_or_default()
    }

    /// The DevAddrs the device answers to.
    pub fn dev_addrs(&self) -> Vec<DevAddr> {
        let mut out: Vec<DevAddr> = self.current.iter().map(|s| s.dev_addr).collect();
        if let Some(p) = &self.pending
            && !out.contains(&p.dev_addr)
        {
            out.push(p.dev_addr);
        }
        out
    }

    fn settings(&self) -> Option<&v3::MacSettings> {
        self.record
            .device
            .as_ref()
            .and_then(|d| d.mac_settings.as_ref())
    }

    /// True unless the MAC settings say the device has 16-bit counters only.
    pub fn supports_32_bit_f_cnt(&self) -> bool {
        self.settings()
            .and_then(|s| s.supports_32_bit_f_cnt)
            .unwrap_or(true)
    }

    /// True when the MAC settings say the device resets its counter (old ABP devices).
    pub fn resets_f_cnt(&self) -> bool {
        self.settings()
            .and_then(|s| s.resets_f_cnt)
            .unwrap_or(false)
    }

    /// The last accepted FCntUp of the current session.
    pub fn last_f_cnt_up(&self) -> Option<u32> {
        if !self.state.f_cnt_up_seen {
            return None;
        }
        self.record
            .device
            .as_ref()
            .and_then(|d| d.session.as_ref())
            .map(|s| s.last_f_cnt_up)
    }

    /// Verifies a data uplink: the first session whose MIC matches wins (current first).
    /// `mic_input` is the raw frame without its MIC.
    pub fn verify(
        &self,
        phy: &PhyPayload,
        mic_input: &[u8],
        tx: TxParams,
    ) -> Result<Verified, Mismatch> {
        let Some(mp) = phy.mac_payload() else {
            return Err(Mismatch::Mic);
        };
        let mic = phy.mic.unwrap_or_default();
        let wire = mp.fhdr.f_cnt;
        let dev_addr = mp.fhdr.dev_addr;
        let conf = if mp.fhdr.f_ctrl.ack {
            self.state.last_conf_f_cnt_down as u16
        } else {
            0
        };
        let check = |s: &SessionCtx, f_cnt: u32| -> bool {
            let computed = if s.v1_1 {
                crypto::uplink_mic_1_1(
                    &s.f_nwk_s_int_key,
                    &s.s_nwk_s_int_key,
                    conf,
                    tx.dr,
                    tx.ch,
                    dev_addr,
                    f_cnt,
                    mic_input,
                )
            } else {
                crypto::uplink_mic_1_0(&s.f_nwk_s_int_key, dev_addr, f_cnt, mic_input)
            };
            crypto::mic_matches(&computed, &mic)
        };
        let mut outcome = Err(Mismatch::Mic);
        if let Some(s) = self.current.as_ref().filter(|s| s.dev_addr == dev_addr) {
            let last = self.last_f_cnt_up();
            let full = if self.supports_32_bit_f_cnt() {
                lorawan::reconstruct_f_cnt(last, wire)
            } else {
                u32::from(wire)
            };
            let exhausted = last.is_some_and(|l| full < l);
            if !exhausted && check(s, full) {
                let retransmission = last == Some(full);
                let gap = last.map_or(0, |l| full.wrapping_sub(l));
                if !s.v1_1 && !retransmission && gap > band::MAX_FCNT_GAP {
                    outcome = Err(Mismatch::Gap);
                } else if self.supports_32_bit_f_cnt() || last.is_none_or(|l| full >= l) {
                    return Ok(Verified {
                        which: Which::Current,
                        f_cnt: full,
                        retransmission,
                    });
                } else {
                    outcome = Err(Mismatch::Replay);
                }
            } else if let Some(l) = last {
                // Tell a replay (a counter at or below the last one) from a MIC failure.
                let same_round = (l & 0xFFFF_0000) | u32::from(wire);
                let reset = u32::from(wire);
                if self.resets_f_cnt() && check(s, reset) {
                    // The device restarted its counter: accept from the new value.
                    return Ok(Verified {
                        which: Which::Current,
                        f_cnt: reset,
                        retransmission: false,
                    });
                }
                if (same_round < l && check(s, same_round)) || (full < l && check(s, full)) {
                    outcome = Err(Mismatch::Replay);
                }
            }
        }
        if let Some(s) = self.pending.as_ref().filter(|s| s.dev_addr == dev_addr) {
            let f_cnt = u32::from(wire);
            if check(s, f_cnt) {
                return Ok(Verified {
                    which: Which::Pending,
                    f_cnt,
                    retransmission: false,
                });
            }
        }
        outcome
    }

    /// The clear FOpts of an uplink (1.1: decrypted with the NwkSEncKey).
    pub fn uplink_f_opts(&self, s: &SessionCtx, phy: &PhyPayload, f_cnt: u32) -> Vec<u8> {
        let Some(mp) = phy.mac_payload() else {
            return Vec::new();
        };
        let mut f_opts = mp.fhdr.f_opts.as_slice().to_vec();
        if s.v1_1 && !f_opts.is_empty() {
            let _ = crypto::encrypt_f_opts(
                &s.nwk_s_enc_key,
                Direction::Uplink,
                s.dev_addr,
                f_cnt,
                &mut f_opts,
                FOptsCounterVariant::Original,
            );
        }
        f_opts
    }

    /// The clear MAC commands of an FPort 0 payload.
    pub fn uplink_port0(&self, s: &SessionCtx, phy: &PhyPayload, f_cnt: u32) -> Vec<u8> {
        let Some(mp) = phy.mac_payload() else {
            return Vec::new();
        };
        let mut payload = mp.frm_payload.clone();
        crypto::decrypt_frm_payload(
            &s.nwk_s_enc_key,
            Direction::Uplink,
            s.dev_addr,
            f_cnt,
            &mut payload,
        );
        payload
    }
}

/// The network keys of a session as the table keeps them: 1.0.x sessions (one key for all
/// three uses) hold one key.
#[derive(Clone)]
struct PackedSession {
    dev_addr: DevAddr,
    f_nwk_s_int_key: Aes128Key,
    /// SNwkSIntKey and NwkSEncKey of a 1.1 session.
    v1_1: Option<Box<[Aes128Key; 2]>>,
    session_key_id: Box<[u8]>,
}

impl PackedSession {
    fn pack(s: &SessionCtx) -> Self {
        let same = s.s_nwk_s_int_key == s.f_nwk_s_int_key && s.nwk_s_enc_key == s.f_nwk_s_int_key;
        Self {
            dev_addr: s.dev_addr,
            f_nwk_s_int_key: s.f_nwk_s_int_key,
            // A 1.0.x session always has one key; a 1.1 one keeps its flag even with equal keys.
            v1_1: (s.v1_1 || !same).then(|| Box::new([s.s_nwk_s_int_key, s.nwk_s_enc_key])),
            session_key_id: s.session_key_id.clone().into_boxed_slice(),
        }
    }

    fn unpack(&self, v1_1: bool) -> SessionCtx {
        let (s, e) = match self.v1_1.as_deref() {
            Some([s, e]) => (*s, *e),
            None => (self.f_nwk_s_int_key, self.f_nwk_s_int_key),
        };
        SessionCtx {
            dev_addr: self.dev_addr,
            f_nwk_s_int_key: self.f_nwk_s_int_key,
            s_nwk_s_int_key: s,
            nwk_s_enc_key: e,
            v1_1,
            session_key_id: self.session_key_id.to_vec(),
        }
    }
}

/// A device as the table holds it between locks: the record encoded (a decoded `EndDevice`
/// with its sessions and MAC state costs several times its encoding), the keys in clear so
/// that a lock decodes but never unwraps.
pub struct PackedDevice {
    /// The encoded `NsDeviceRecord`, `state` included.
    record: Box<[u8]>,
    /// `Device::state` encoded when it is not `record.state` (a change not written yet).
    state: Option<Box<[u8]>>,
    version: u64,
    /// Bit 0: current session is 1.1; bit 1: pending session is 1.1.
    v1_1: u8,
    current: Option<PackedSession>,
    pending: Option<Box<PackedSession>>,
}

impl PackedDevice {
    /// Packs a device (exact: [`PackedDevice::unpack`] gives it back).
    pub fn pack(d: &Device) -> Self {
        let state = d.state.encode_to_vec();
        let state = (state != d.record.state).then(|| state.into_boxed_slice());
        let flag = |s: &Option<SessionCtx>, bit: u8| {
            if s.as_ref().is_some_and(|s| s.v1_1) {
                bit
            } else {
                0
            }
        };
        Self {
            record: d.record.encode_to_vec().into_boxed_slice(),
            state,
            version: d.version,
            v1_1: flag(&d.current, 1) | flag(&d.pending, 2),
            current: d.current.as_ref().map(PackedSession::pack),
            pending: d.pending.as_ref().map(|s| Box::new(PackedSession::pack(s))),
        }
    }

    /// The device (a few microseconds: one record decode).
    pub fn unpack(&self) -> Device {
        // Both encodings were made by `pack` from decoded values: they decode.
        let record =
            NsDeviceRecord::decode(&*self.record).expect("a packed NS device record decodes");
        let state = NsState::decode(self.state.as_deref().unwrap_or(record.state.as_slice()))
            .expect("a packed NS state decodes");
        Device {
            version: self.version,
            state,
            current: self.current.as_ref().map(|s| s.unpack(self.v1_1 & 1 != 0)),
            pending: self.pending.as_ref().map(|s| s.unpack(self.v1_1 & 2 != 0)),
            record,
        }
    }

    /// Heap and inline bytes this packed device holds (without allocator overhead).
    pub fn size(&self) -> usize {
        let session =
            |s: &PackedSession| s.session_key_id.len() + s.v1_1.as_ref().map_or(0, |_| 32);
        std::mem::size_of::<Self>()
            + self.record.len()
            + self.state.as_ref().map_or(0, |s| s.len())
            + self.current.as_ref().map_or(0, session)
            + self
                .pending
                .as_ref()
                .map_or(0, |s| std::mem::size_of::<PackedSession>() + session(s))
    }
}

/// A locked device: the decoded device, packed again when the lock is released if it was
/// changed (`DerefMut`).
pub struct DeviceGuard<G: DerefMut<Target = PackedDevice>> {
    packed: G,
    device: Device,
    dirty: bool,
}

impl<G: DerefMut<Target = PackedDevice>> DeviceGuard<G> {
    fn new(packed: G) -> Self {
        let device = packed.unpack();
        Self {
            packed,
            device,
            dirty: false,
        }
    }
}

impl<G: DerefMut<Target = PackedDevice>> Deref for DeviceGuard<G> {
    type Target = Device;
    fn deref(&self) -> &Device {
        &self.device
    }
}

impl<G: DerefMut<Target = PackedDevice>> DerefMut for DeviceGuard<G> {
    fn deref_mut(&mut self) -> &mut Device {
        self.dirty = true;
        &mut self.device
    }
}

impl<G: DerefMut<Target = PackedDevice>> Drop for DeviceGuard<G> {
    fn drop(&mut self) {
        if self.dirty {
            *self.packed = PackedDevice::pack(&self.device);
        }
    }
}

/// A device behind its lock: one writer at a time, across the awaits of the pipeline. The
/// device is kept packed; a lock unpacks it.
#[derive(Clone)]
pub struct Slot(Arc<tokio::sync::Mutex<PackedDevice>>);

impl Slot {
    /// A slot holding `device`.
    pub fn new(device: &Device) -> Self {
        Self(Arc::new(tokio::sync::Mutex::new(PackedDevice::pack(
            device,
        ))))
    }

    /// Locks the device.
    pub async fn lock(&self) -> DeviceGuard<tokio::sync::MutexGuard<'_, PackedDevice>> {
        DeviceGuard::new(self.0.lock().await)
    }

    /// Locks the device, the guard owning the slot.
    pub async fn lock_owned(self) -> DeviceGuard<tokio::sync::OwnedMutexGuard<PackedDevice>> {
        DeviceGuard::new(self.0.lock_owned().await)
    }

    /// Locks the device if no one holds it.
    pub fn try_lock(&self) -> Option<DeviceGuard<tokio::sync::MutexGuard<'_, PackedDevice>>> {
        self.0.try_lock().ok().map(DeviceGuard::new)
    }

    /// Whether both are the same slot.
    pub fn ptr_eq(a: &Slot, b: &Slot) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

/// The slots of one DevAddr: nearly always one, without a `Vec` for it.
enum AddrSlots {
    One(Slot),
    Many(Vec<Slot>),
}

impl AddrSlots {
    fn as_slice(&self) -> &[Slot] {
        match self {
            AddrSlots::One(s) => std::slice::from_ref(s),
            AddrSlots::Many(v) => v,
        }
    }

    fn push(&mut self, slot: Slot) {
        match self {
            AddrSlots::One(s) => *self = AddrSlots::Many(vec![s.clone(), slot]),
            AddrSlots::Many(v) => v.push(slot),
        }
    }

    /// Removes `slot`; true when none is left.
    fn remove(&mut self, slot: &Slot) -> bool {
        match self {
            AddrSlots::One(s) => Slot::ptr_eq(s, slot),
            AddrSlots::Many(v) => {
                v.retain(|s| !Slot::ptr_eq(s, slot));
                match v.len() {
                    0 => true,
                    1 => {
                        *self = AddrSlots::One(v[0].clone());
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

type AddrShard = RwLock<HashMap<DevAddr, AddrSlots>>;
type KeyShard = RwLock<HashMap<Box<str>, Slot>>;

/// The device table.
pub struct Devices {
    hasher: RandomState,
    by_addr: Box<[AddrShard]>,
    by_key: Box<[KeyShard]>,
    /// DevAddrs the shared store recently had no device for: a flood of unknown DevAddrs
    /// costs one store read per DevAddr and period, not one per frame.
    unknown: RecentSet,
    /// DevAddrs whose devices were recently re-read after a failed verification.
    refreshed: RecentSet,
    /// Reads of the shared store on behalf of the index, by outcome.
    lookups: Family<[(&'static str, &'static str); 1], Counter>,
}

/// How long a DevAddr stays in a [`RecentSet`].
pub const RECENT_TTL: Duration = Duration::from_secs(2);

/// How many DevAddrs a [`RecentSet`] holds at most.
pub const RECENT_CAPACITY: usize = 65_536;

/// A bounded set of DevAddrs, each remembered for a while.
pub struct RecentSet {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<DevAddr, Instant>>,
}

impl RecentSet {
    /// A set that keeps each DevAddr for `ttl`, and at most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::default(),
        }
    }

    /// Whether `addr` was added less than the TTL ago.
    pub fn contains(&self, addr: DevAddr) -> bool {
        let mut entries = self.entries.lock().expect("recent set lock");
        match entries.get(&addr) {
            Some(at) if at.elapsed() < self.ttl => true,
            Some(_) => {
                entries.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// Adds `addr` (from now); when full, expired entries go first, then any one.
    pub fn insert(&self, addr: DevAddr) {
        let mut entries = self.entries.lock().expect("recent set lock");
        if entries.len() >= self.capacity && !entries.contains_key(&addr) {
            let ttl = self.ttl;
            entries.retain(|_, at| at.elapsed() < ttl);
            if entries.len() >= self.capacity
                && let Some(victim) = entries.keys().next().copied()
            {
                entries.remove(&victim);
            }
        }
        entries.insert(addr, Instant::now());
    }

    /// Forgets `addr`.
    pub fn remove(&self, addr: DevAddr) {
        self.entries.lock().expect("recent set lock").remove(&addr);
    }

    /// How many DevAddrs are held (expired ones included until they are evicted).
    pub fn len(&self) -> usize {
        self.entries.lock().expect("recent set lock").len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Devices {
    fn default() -> Self {
        Self::new()
    }
}

impl Devices {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            by_addr: (0..SHARDS).map(|_| RwLock::default()).collect(),
            by_key: (0..SHARDS).map(|_| RwLock::default()).collect(),
            unknown: RecentSet::new(RECENT_TTL, RECENT_CAPACITY),
            refreshed: RecentSet::new(RECENT_TTL, RECENT_CAPACITY),
            lookups: Family::default(),
        }
    }

    /// Registers the index metrics (`device_index_lookups`).
    pub fn register_metrics(&self, r: &mut Registry) {
        r.register(
            "device_index_lookups",
            "Shared store reads after a device index miss or a stale device, by outcome",
            self.lookups.clone(),
        );
    }

    /// Counts one store read of the index with `outcome`.
    pub fn count_lookup(&self, outcome: &'static str) {
        self.lookups.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// DevAddrs the shared store recently had no device for.
    pub fn unknown(&self) -> &RecentSet {
        &self.unknown
    }

    /// DevAddrs whose devices were recently re-read from the shared store.
    pub fn refreshed(&self) -> &RecentSet {
        &self.refreshed
    }

    fn addr_shard(&self, a: DevAddr) -> &AddrShard {
        // The low bits of a DevAddr are its NwkAddr: evenly spread.
        &self.by_addr[a.to_u32() as usize % SHARDS]
    }

    fn key_shard(&self, key: &str) -> &KeyShard {
        &self.by_key[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// The devices with a session on `addr`.
    pub fn by_dev_addr(&self, addr: DevAddr) -> Vec<Slot> {
        self.addr_shard(addr)
            .read()
            .expect("device index lock")
            .get(&addr)
            .map(|v| v.as_slice().to_vec())
            .unwrap_or_default()
    }

    /// The device with this `application_id/device_id`.
    pub fn get(&self, key: &str) -> Option<Slot> {
        self.key_shard(key)
            .read()
            .expect("device index lock")
            .get(key)
            .cloned()
    }

    /// Adds a device (or returns the slot already there).
    pub fn insert(&self, device: Device) -> Slot {
        let key = device.key();
        let addrs = device.dev_addrs();
        let slot = {
            let mut shard = self.key_shard(&key).write().expect("device index lock");
            if let Some(s) = shard.get(key.as_str()) {
                return s.clone();
            }
            let slot = Slot::new(&device);
            shard.insert(key.as_str().into(), slot.clone());
            slot
        };
        self.reindex(&key, &[], &addrs, &slot);
        slot
    }

    /// Moves the DevAddr entries of `slot` from `old` to `new`. DevAddr entries name their
    /// device by slot, so that its key is held once; `_key` is the device's key.
    pub fn reindex(&self, _key: &str, old: &[DevAddr], new: &[DevAddr], slot: &Slot) {
        for a in old.iter().filter(|a| !new.contains(a)) {
            let mut shard = self.addr_shard(*a).write().expect("device index lock");
            if let Some(v) = shard.get_mut(a)
                && v.remove(slot)
            {
                shard.remove(a);
            }
        }
        for a in new.iter().filter(|a| !old.contains(a)) {
            self.unknown.remove(*a);
            let mut shard = self.addr_shard(*a).write().expect("device index lock");
            match shard.get_mut(a) {
                Some(v) if v.as_slice().iter().any(|s| Slot::ptr_eq(s, slot)) => {}
                Some(v) => v.push(slot.clone()),
                None => {
                    shard.insert(*a, AddrSlots::One(slot.clone()));
                }
            }
        }
    }

    /// Forgets a device.
    pub fn remove(&self, key: &str, addrs: &[DevAddr]) {
        let slot = self
            .key_shard(key)
            .write()
            .expect("device index lock")
            .remove(key);
        if let Some(slot) = slot {
            self.reindex(key, addrs, &[], &slot);
        }
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.by_key
            .iter()
            .map(|s| s.read().expect("device index lock").len())
            .sum()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The MType of a data uplink, if it is one.
pub fn is_data_up(m: MType) -> bool {
    matches!(m, MType::UnconfirmedDataUp | MType::ConfirmedDataUp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Aes128Key {
        Aes128Key([b; 16])
    }

    fn session(addr: u32, v1_1: bool) -> SessionCtx {
        SessionCtx {
            dev_addr: DevAddr::from_u32(addr),
            f_nwk_s_int_key: key(1),
            s_nwk_s_int_key: if v1_1 { key(2) } else { key(1) },
            nwk_s_enc_key: if v1_1 { key(3) } else { key(1) },
            v1_1,
            session_key_id: if v1_1 { vec![9, 8, 7] } else { Vec::new() },
        }
    }

    fn device(id: &str, addr: u32) -> Device {
        let state = NsState {
            f_cnt_up_seen: true,
            next_n_f_cnt_down: 7,
            last_uplink_tokens: vec![vec![1; 24], vec![2; 24]],
            mac: vec![1, 2, 3],
            ..Default::default()
        };
        Device {
            record: NsDeviceRecord {
                device: Some(v3::EndDevice {
                    ids: Some(v3::EndDeviceIdentifiers::new("app", id)),
                    lorawan_version: v3::MacVersion::MacV103 as i32,
                    session: Some(v3::Session {
                        dev_addr: addr.to_be_bytes().to_vec(),
                        last_f_cnt_up: 41,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                pending_session: None,
                state: state.encode_to_vec(),
            },
            version: 5,
            state,
            current: Some(session(addr, false)),
            pending: None,
        }
    }

    fn assert_same(a: &Device, b: &Device) {
        assert_eq!(a.record, b.record);
        assert_eq!(a.version, b.version);
        assert_eq!(a.state, b.state);
        assert_eq!(a.current, b.current);
        assert_eq!(a.pending, b.pending);
    }

    #[test]
    fn packing_is_exact_and_holds_the_state_once() {
        let d = device("a", 0x2600_0001);
        let p = PackedDevice::pack(&d);
        // The state is the record's: not held twice.
        assert!(p.state.is_none());
        // A 1.0.x session holds one key.
        assert!(p.current.as_ref().unwrap().v1_1.is_none());
        assert_same(&p.unpack(), &d);
        assert!(p.size() < 512, "packed ABP device is {} bytes", p.size());
    }

    #[test]
    fn a_state_not_written_to_the_record_yet_survives_packing() {
        let mut d = device("a", 0x2600_0001);
        d.state.next_n_f_cnt_down = 99;
        let p = PackedDevice::pack(&d);
        assert!(p.state.is_some());
        let back = p.unpack();
        assert_eq!(back.state.next_n_f_cnt_down, 99);
        assert_same(&back, &d);
    }

    #[test]
    fn v1_1_and_pending_sessions_survive_packing() {
        let mut d = device("a", 0x2600_0001);
        d.current = Some(session(0x2600_0001, true));
        // A 1.1 session whose keys happen to be equal stays 1.1.
        let mut same = session(0x2600_0002, true);
        same.s_nwk_s_int_key = same.f_nwk_s_int_key;
        same.nwk_s_enc_key = same.f_nwk_s_int_key;
        d.pending = Some(same);
        assert_same(&PackedDevice::pack(&d).unpack(), &d);
        d.pending = Some(session(0x2600_0003, false));
        assert_same(&PackedDevice::pack(&d).unpack(), &d);
    }

    #[tokio::test]
    async fn a_change_under_the_lock_is_kept_and_a_read_repacks_nothing() {
        let slot = Slot::new(&device("a", 0x2600_0001));
        let before = slot.0.lock().await.record.as_ptr();
        {
            let dev = slot.lock().await;
            assert_eq!(dev.version, 5);
        }
        assert_eq!(slot.0.lock().await.record.as_ptr(), before);
        {
            let mut dev = slot.lock().await;
            dev.version = 6;
            dev.state.next_n_f_cnt_down = 8;
        }
        let dev = slot.clone().lock_owned().await;
        assert_eq!((dev.version, dev.state.next_n_f_cnt_down), (6, 8));
        assert!(slot.try_lock().is_none(), "held by the owned guard");
    }

    #[tokio::test]
    async fn the_index_follows_devices_by_slot() {
        let t = Devices::new();
        let a = t.insert(device("a", 0x2600_0001));
        let b = t.insert(device("b", 0x2600_0001));
        // Inserting a cached device again returns its slot.
        assert!(Slot::ptr_eq(&t.insert(device("a", 0x2600_0009)), &a));
        let addr = DevAddr::from_u32(0x2600_0001);
        let other = DevAddr::from_u32(0x2600_0002);
        assert_eq!(t.by_dev_addr(addr).len(), 2);
        t.reindex("app/a", &[addr], &[other], &a);
        let on_addr = t.by_dev_addr(addr);
        assert_eq!(on_addr.len(), 1);
        assert!(Slot::ptr_eq(&on_addr[0], &b));
        assert!(Slot::ptr_eq(&t.by_dev_addr(other)[0], &a));
        t.remove("app/b", &[addr]);
        assert!(t.by_dev_addr(addr).is_empty());
        assert!(t.get("app/b").is_none());
        assert!(Slot::ptr_eq(&t.get("app/a").unwrap(), &a));
        assert_eq!(t.len(), 1);
        // An emptied DevAddr leaves no entry behind.
        let shard = t.addr_shard(addr).read().unwrap();
        assert!(!shard.contains_key(&addr));
    }
}
