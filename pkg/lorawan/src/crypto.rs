//! LoRaWAN 1.0.x and 1.1 cryptography on raw bytes: MICs, payload encryption, join-accept
//! encryption, session-key derivation and RFC 3394 key wrapping.
//!
//! Everything here works on byte slices and the identifier types of [`crate::types`]; it
//! does not depend on the PHYPayload codec. Multi-byte fields go into the AES blocks in
//! LoRaWAN wire (little-endian) order. Frame-level functions do not allocate.
//!
//! References: LoRaWAN L2 1.0.4 §4.3.3 / §4.4, LoRaWAN 1.1 §4.3.3 / §4.4 / §6.2, the
//! LoRaWAN 1.1 errata (FOpts encryption), RFC 4493 (AES-CMAC) and RFC 3394 (key wrap).

use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use cmac::{Cmac, Mac};

use crate::types::{Aes128Key, DevAddr, DevNonce, Eui64, JoinNonce, NetId};

/// Link direction of a data frame; its value is the `Dir` byte of the AES blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Device to network.
    Uplink = 0,
    /// Network to device.
    Downlink = 1,
}

impl Direction {
    /// The other direction.
    pub const fn reverse(self) -> Self {
        match self {
            Self::Uplink => Self::Downlink,
            Self::Downlink => Self::Uplink,
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Uplink => "uplink",
            Self::Downlink => "downlink",
        })
    }
}

/// Errors of the cryptographic functions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// An input had a length the operation does not accept.
    #[error("{what}: invalid length {got}, expected {expected}")]
    InvalidLength {
        /// Which input.
        what: &'static str,
        /// The accepted lengths, in words.
        expected: &'static str,
        /// The length given.
        got: usize,
    },
    /// RFC 3394 unwrap: the integrity check failed (wrong KEK or corrupted data).
    #[error("key unwrap: integrity check failed")]
    UnwrapIntegrity,
}

/// The session keys of a LoRaWAN 1.0.x session (also a 1.1 device joined without OptNeg).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKeys10 {
    /// Network session key: MICs and FPort 0 payloads.
    pub nwk_s_key: Aes128Key,
    /// Application session key: FPort > 0 payloads.
    pub app_s_key: Aes128Key,
}

/// The session keys of a LoRaWAN 1.1 session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKeys11 {
    /// Forwarding network session integrity key: uplink MIC (second half).
    pub f_nwk_s_int_key: Aes128Key,
    /// Serving network session integrity key: uplink MIC (first half) and downlink MIC.
    pub s_nwk_s_int_key: Aes128Key,
    /// Network session encryption key: FOpts and FPort 0 payloads.
    pub nwk_s_enc_key: Aes128Key,
    /// Application session key: FPort > 0 payloads.
    pub app_s_key: Aes128Key,
}

/// Which A-block layout [`encrypt_f_opts`] uses (LoRaWAN 1.1 FOpts encryption).
///
/// The block is `0x01 | 0x00 0x00 0x00 | a[4] | Dir | DevAddr | FCnt | 0x00 | a[15]`.
/// LoRaWAN 1.1 as published left `a[4]` and `a[15]` zero, so FOpts reused the keystream of
/// FRMPayload block 0 and uplink/NFCntDown/AFCntDown frames with equal counters shared a
/// keystream; the LoRaWAN 1.1 errata (folded into 1.1.1) set `a[15] = 0x01` and tell the
/// counters apart in `a[4]`. Which one a peer uses: ChirpStack `lrwn` always uses the errata
/// layout; Semtech LoRaMac-node uses the errata layout when the session's LoRaWAN version is
/// above 1.1.0 and the original otherwise; The Things Stack's `pkg/crypto` (`isFOpts`) uses
/// the original layout. Pick per device (MAC version / regional-parameters profile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FOptsCounterVariant {
    /// LoRaWAN 1.1.0 as published: `a[4] = 0x00`, `a[15] = 0x00`, whatever the counter.
    Original,
    /// Errata, frame counted with FCntUp (every uplink) or NFCntDown (downlinks without
    /// FPort or with FPort 0): `a[4] = 0x01`, `a[15] = 0x01`.
    ErrataNFCnt,
    /// Errata, downlink counted with AFCntDown (downlinks with FPort > 0): `a[4] = 0x02`,
    /// `a[15] = 0x01`.
    ErrataAFCntDown,
}

impl FOptsCounterVariant {
    /// The errata variant for a frame: AFCntDown for downlinks with FPort > 0, else NFCnt.
    pub fn errata_for(dir: Direction, f_port: Option<u8>) -> Self {
        match (dir, f_port) {
            (Direction::Downlink, Some(p)) if p > 0 => Self::ErrataAFCntDown,
            _ => Self::ErrataNFCnt,
        }
    }

    fn bytes(self) -> (u8, u8) {
        match self {
            Self::Original => (0x00, 0x00),
            Self::ErrataNFCnt => (0x01, 0x01),
            Self::ErrataAFCntDown => (0x02, 0x01),
        }
    }
}

fn cipher(key: &Aes128Key) -> Aes128 {
    Aes128::new(GenericArray::from_slice(&key.0))
}

fn cmac_new(key: &Aes128Key) -> Cmac<Aes128> {
    <Cmac<Aes128> as KeyInit>::new(GenericArray::from_slice(&key.0))
}

fn aes_encrypt_block(c: &Aes128, block: [u8; 16]) -> [u8; 16] {
    let mut b = GenericArray::from(block);
    c.encrypt_block(&mut b);
    b.into()
}

/// AES-128-CMAC (RFC 4493) of the concatenation of `parts`.
pub fn aes128_cmac(key: &Aes128Key, parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = cmac_new(key);
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Plain AES-128 encryption of one block (ECB), as used by the key derivations.
pub fn aes128_encrypt_block(key: &Aes128Key, block: [u8; 16]) -> [u8; 16] {
    aes_encrypt_block(&cipher(key), block)
}

fn mic4(parts: &[&[u8]], key: &Aes128Key) -> [u8; 4] {
    let full = aes128_cmac(key, parts);
    [full[0], full[1], full[2], full[3]]
}

/// Compares a computed MIC with the received one in constant time (no early exit); a
/// `received` slice that is not 4 bytes long never matches.
pub fn mic_matches(computed: &[u8; 4], received: &[u8]) -> bool {
    received.len() == 4
        && computed
            .iter()
            .zip(received)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Builds a B0/B1 block. `msg_len` is truncated to a byte (LoRaWAN frames are < 256 bytes).
fn b_block(
    conf_f_cnt: u16,
    b3: u8,
    b4: u8,
    dir: Direction,
    dev_addr: DevAddr,
    f_cnt: u32,
    msg_len: usize,
) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = 0x49;
    b[1..3].copy_from_slice(&conf_f_cnt.to_le_bytes());
    b[3] = b3;
    b[4] = b4;
    b[5] = dir as u8;
    b[6..10].copy_from_slice(&dev_addr.to_le_bytes());
    b[10..14].copy_from_slice(&f_cnt.to_le_bytes());
    b[15] = msg_len as u8;
    b
}

/// LoRaWAN 1.0.x uplink MIC over `msg` (MHDR up to the end of FRMPayload) with the NwkSKey.
pub fn uplink_mic_1_0(nwk_s_key: &Aes128Key, dev_addr: DevAddr, f_cnt: u32, msg: &[u8]) -> [u8; 4] {
    let b0 = b_block(0, 0, 0, Direction::Uplink, dev_addr, f_cnt, msg.len());
    mic4(&[&b0, msg], nwk_s_key)
}

/// LoRaWAN 1.1 uplink MIC: `cmacS[0..2] | cmacF[0..2]`, cmacF over B0 with the FNwkSIntKey,
/// cmacS over B1 (ConfFCnt, TxDr, TxCh) with the SNwkSIntKey. `conf_f_cnt` is the low 16
/// bits of the acknowledged downlink's FCnt when ACK is set, else 0.
#[allow(clippy::too_many_arguments)]
pub fn uplink_mic_1_1(
    f_nwk_s_int_key: &Aes128Key,
    s_nwk_s_int_key: &Aes128Key,
    conf_f_cnt: u16,
    tx_dr: u8,
    tx_ch: u8,
    dev_addr: DevAddr,
    f_cnt: u32,
    msg: &[u8],
) -> [u8; 4] {
    let b0 = b_block(0, 0, 0, Direction::Uplink, dev_addr, f_cnt, msg.len());
    let b1 = b_block(
        conf_f_cnt,
        tx_dr,
        tx_ch,
        Direction::Uplink,
        dev_addr,
        f_cnt,
        msg.len(),
    );
    let f = mic4(&[&b0, msg], f_nwk_s_int_key);
    let s = mic4(&[&b1, msg], s_nwk_s_int_key);
    [s[0], s[1], f[0], f[1]]
}

/// Downlink MIC over `msg` (MHDR up to the end of FRMPayload). `key` is the NwkSKey (1.0.x)
/// or SNwkSIntKey (1.1); `conf_f_cnt` is 0 in 1.0.x, and in 1.1 the low 16 bits of the
/// acknowledged uplink's FCnt when ACK is set, else 0.
pub fn downlink_mic(
    key: &Aes128Key,
    conf_f_cnt: u16,
    dev_addr: DevAddr,
    f_cnt: u32,
    msg: &[u8],
) -> [u8; 4] {
    let b0 = b_block(
        conf_f_cnt,
        0,
        0,
        Direction::Downlink,
        dev_addr,
        f_cnt,
        msg.len(),
    );
    mic4(&[&b0, msg], key)
}

fn a_block(a4: u8, dir: Direction, dev_addr: DevAddr, f_cnt: u32, a15: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0x01;
    a[4] = a4;
    a[5] = dir as u8;
    a[6..10].copy_from_slice(&dev_addr.to_le_bytes());
    a[10..14].copy_from_slice(&f_cnt.to_le_bytes());
    a[15] = a15;
    a
}

/// Encrypts (or decrypts: the operation is its own inverse) an FRMPayload in place.
///
/// `key` is the AppSKey for FPort > 0, and the NwkSKey (1.0.x) or NwkSEncKey (1.1) for
/// FPort 0. Block `i` (from 1) is XORed with `AES(key, 0x01 | 0^4 | Dir | DevAddr | FCnt |
/// 0x00 | i)`; the block counter is a byte, which covers any LoRaWAN frame.
pub fn encrypt_frm_payload(
    key: &Aes128Key,
    dir: Direction,
    dev_addr: DevAddr,
    f_cnt: u32,
    payload: &mut [u8],
) {
    let c = cipher(key);
    for (i, chunk) in payload.chunks_mut(16).enumerate() {
        let a = a_block(0, dir, dev_addr, f_cnt, (i + 1) as u8);
        let s = aes_encrypt_block(&c, a);
        for (p, k) in chunk.iter_mut().zip(s.iter()) {
            *p ^= k;
        }
    }
}

/// Decrypts an FRMPayload in place; the same operation as [`encrypt_frm_payload`].
pub fn decrypt_frm_payload(
    key: &Aes128Key,
    dir: Direction,
    dev_addr: DevAddr,
    f_cnt: u32,
    payload: &mut [u8],
) {
    encrypt_frm_payload(key, dir, dev_addr, f_cnt, payload)
}

/// Encrypts (or decrypts) LoRaWAN 1.1 FOpts in place with the NwkSEncKey.
///
/// `f_cnt` is FCntUp for uplinks and the downlink's own counter (NFCntDown or AFCntDown)
/// for downlinks. FOpts hold at most 15 bytes; longer input is an error.
pub fn encrypt_f_opts(
    nwk_s_enc_key: &Aes128Key,
    dir: Direction,
    dev_addr: DevAddr,
    f_cnt: u32,
    f_opts: &mut [u8],
    variant: FOptsCounterVariant,
) -> Result<(), CryptoError> {
    if f_opts.len() > 15 {
        return Err(CryptoError::InvalidLength {
            what: "FOpts",
            expected: "at most 15",
            got: f_opts.len(),
        });
    }
    let (a4, a15) = variant.bytes();
    let s = aes128_encrypt_block(nwk_s_enc_key, a_block(a4, dir, dev_addr, f_cnt, a15));
    for (p, k) in f_opts.iter_mut().zip(s.iter()) {
        *p ^= k;
    }
    Ok(())
}

/// Join-request MIC: CMAC with the AppKey (1.0.x) or NwkKey (1.1) over
/// `msg` = MHDR | JoinEUI | DevEUI | DevNonce.
pub fn join_request_mic(key: &Aes128Key, msg: &[u8]) -> [u8; 4] {
    mic4(&[msg], key)
}

/// Rejoin-request MIC over `msg` = MHDR up to the end of the rejoin fields. Types 0 and 2
/// use the SNwkSIntKey, type 1 the JSIntKey.
pub fn rejoin_request_mic(key: &Aes128Key, msg: &[u8]) -> [u8; 4] {
    mic4(&[msg], key)
}

/// LoRaWAN 1.0.x join-accept MIC (also 1.1 without OptNeg) with the AppKey (NwkKey in 1.1)
/// over `msg` = MHDR | JoinNonce | NetID | DevAddr | DLSettings | RxDelay | CFList.
pub fn join_accept_mic_1_0(key: &Aes128Key, msg: &[u8]) -> [u8; 4] {
    mic4(&[msg], key)
}

/// The JoinReqType value of a join-accept answering a join-request.
pub const JOIN_REQ_TYPE_JOIN_REQUEST: u8 = 0xFF;

/// LoRaWAN 1.1 join-accept MIC (OptNeg set) with the JSIntKey over
/// `JoinReqType | JoinEUI | DevNonce | msg`, `msg` as in [`join_accept_mic_1_0`].
/// `join_req_type` is 0xFF for a join-request, 0, 1 or 2 for a rejoin-request of that type;
/// `dev_nonce` is the DevNonce, or the RJcount of a rejoin.
pub fn join_accept_mic_1_1(
    js_int_key: &Aes128Key,
    join_req_type: u8,
    join_eui: Eui64,
    dev_nonce: DevNonce,
    msg: &[u8],
) -> [u8; 4] {
    mic4(
        &[
            &[join_req_type],
            &join_eui.to_le_bytes(),
            &dev_nonce.to_le_bytes(),
            msg,
        ],
        js_int_key,
    )
}

fn check_join_accept_len(phy: &[u8]) -> Result<(), CryptoError> {
    match phy.len() {
        17 | 33 => Ok(()),
        got => Err(CryptoError::InvalidLength {
            what: "join-accept PHYPayload",
            expected: "17 or 33 (MHDR + 16 or 32 bytes incl. MIC)",
            got,
        }),
    }
}

/// Encrypts a join-accept PHYPayload (`MHDR | fields | MIC`, 17 or 33 bytes) the network's
/// way: MHDR stays in clear, the rest goes through AES *decryption* in ECB mode with the
/// AppKey (1.0.x), NwkKey (1.1 join-request) or JSEncKey (1.1 rejoin).
pub fn encrypt_join_accept(key: &Aes128Key, phy: &[u8]) -> Result<Vec<u8>, CryptoError> {
    check_join_accept_len(phy)?;
    let c = cipher(key);
    let mut out = phy.to_vec();
    for chunk in out[1..].chunks_exact_mut(16) {
        let block = GenericArray::from_mut_slice(chunk);
        c.decrypt_block(block);
    }
    Ok(out)
}

/// Decrypts a join-accept PHYPayload (17 or 33 bytes): MHDR in clear, the rest through AES
/// *encryption* in ECB mode. Returns the plain PHYPayload, MIC included.
pub fn decrypt_join_accept(key: &Aes128Key, phy: &[u8]) -> Result<Vec<u8>, CryptoError> {
    check_join_accept_len(phy)?;
    let c = cipher(key);
    let mut out = phy.to_vec();
    for chunk in out[1..].chunks_exact_mut(16) {
        let block = GenericArray::from_mut_slice(chunk);
        c.encrypt_block(block);
    }
    Ok(out)
}

fn derive(key: &Aes128Key, prefix: u8, fields: &[&[u8]]) -> Aes128Key {
    let mut b = [0u8; 16];
    b[0] = prefix;
    let mut pos = 1;
    for f in fields {
        b[pos..pos + f.len()].copy_from_slice(f);
        pos += f.len();
    }
    Aes128Key(aes128_encrypt_block(key, b))
}

/// LoRaWAN 1.0.x session keys: `AES(AppKey, 0x01|0x02 | JoinNonce | NetID | DevNonce | 0…)`.
/// A 1.1 device joined without OptNeg uses its NwkKey here.
pub fn derive_session_keys_1_0(
    app_key: &Aes128Key,
    join_nonce: JoinNonce,
    net_id: NetId,
    dev_nonce: DevNonce,
) -> SessionKeys10 {
    let jn = join_nonce.to_le_bytes();
    let ni = net_id.to_le_bytes();
    let dn = dev_nonce.to_le_bytes();
    SessionKeys10 {
        nwk_s_key: derive(app_key, 0x01, &[&jn, &ni, &dn]),
        app_s_key: derive(app_key, 0x02, &[&jn, &ni, &dn]),
    }
}

/// LoRaWAN 1.1 session keys (OptNeg set): `AES(key, prefix | JoinNonce | JoinEUI | DevNonce
/// | 0…)` with prefix 0x01 FNwkSIntKey, 0x03 SNwkSIntKey, 0x04 NwkSEncKey (all from the
/// NwkKey) and 0x02 AppSKey (from the AppKey). Note: the JoinEUI, not the DevEUI.
pub fn derive_session_keys_1_1(
    nwk_key: &Aes128Key,
    app_key: &Aes128Key,
    join_nonce: JoinNonce,
    join_eui: Eui64,
    dev_nonce: DevNonce,
) -> SessionKeys11 {
    let jn = join_nonce.to_le_bytes();
    let je = join_eui.to_le_bytes();
    let dn = dev_nonce.to_le_bytes();
    let f: [&[u8]; 3] = [&jn, &je, &dn];
    SessionKeys11 {
        f_nwk_s_int_key: derive(nwk_key, 0x01, &f),
        app_s_key: derive(app_key, 0x02, &f),
        s_nwk_s_int_key: derive(nwk_key, 0x03, &f),
        nwk_s_enc_key: derive(nwk_key, 0x04, &f),
    }
}

/// LoRaWAN 1.1 JSIntKey: `AES(NwkKey, 0x06 | DevEUI | 0…)` (the DevEUI, not the JoinEUI).
pub fn derive_js_int_key(nwk_key: &Aes128Key, dev_eui: Eui64) -> Aes128Key {
    derive(nwk_key, 0x06, &[&dev_eui.to_le_bytes()])
}

/// LoRaWAN 1.1 JSEncKey: `AES(NwkKey, 0x05 | DevEUI | 0…)` (the DevEUI, not the JoinEUI).
pub fn derive_js_enc_key(nwk_key: &Aes128Key, dev_eui: Eui64) -> Aes128Key {
    derive(nwk_key, 0x05, &[&dev_eui.to_le_bytes()])
}

/// Wraps an AES-128 key with a key-encryption key (RFC 3394, default IV): 24 bytes out.
pub fn wrap_key(kek: &Aes128Key, key: &Aes128Key) -> [u8; 24] {
    let kw = aes_kw::KekAes128::from(kek.0);
    let mut out = [0u8; 24];
    // 16 bytes in and 24 out are the sizes RFC 3394 requires, so this cannot fail.
    kw.wrap(&key.0, &mut out)
        .expect("RFC 3394 wrap of a 16-byte key into 24 bytes");
    out
}

/// Unwraps an RFC 3394-wrapped AES-128 key. `wrapped` must be 24 bytes; a failed integrity
/// check (wrong KEK, corrupted data) is [`CryptoError::UnwrapIntegrity`].
pub fn unwrap_key(kek: &Aes128Key, wrapped: &[u8]) -> Result<Aes128Key, CryptoError> {
    if wrapped.len() != 24 {
        return Err(CryptoError::InvalidLength {
            what: "wrapped key",
            expected: "24",
            got: wrapped.len(),
        });
    }
    let kw = aes_kw::KekAes128::from(kek.0);
    let mut out = [0u8; 16];
    kw.unwrap(wrapped, &mut out)
        .map_err(|_| CryptoError::UnwrapIntegrity)?;
    Ok(Aes128Key(out))
}
