//! LoRaWAN 1.1 FOpts encryption per device: the published 1.1 block layout or the errata's
//! (which also tells NFCntDown from AFCntDown frames apart), from the device's MAC settings
//! or the NS default.

use lorawan::crypto::{self, FOptsCounterVariant};
use lorawan::{Direction, PhyPayload};
use tern_api::v3;

use crate::config::{FOptsVariant, NsConfig};
use crate::devices::SessionCtx;

/// The layout a device uses: its MAC setting, else the NS's `f-opts-counter-variant`.
pub(crate) fn variant_of(device: Option<&v3::EndDevice>, config: &NsConfig) -> FOptsVariant {
    device
        .and_then(|d| d.mac_settings.as_ref())
        .and_then(|s| s.f_opts_counter_variant)
        .and_then(|v| v3::FOptsCounterVariant::try_from(v).ok())
        .map_or(config.f_opts_counter_variant, |v| match v {
            v3::FOptsCounterVariant::Errata => FOptsVariant::Errata,
            v3::FOptsCounterVariant::Original11 => FOptsVariant::Original11,
        })
}

/// The A block of one frame: the errata picks it by direction and FPort (AFCntDown frames
/// are the downlinks with FPort > 0).
pub(crate) fn block(
    variant: FOptsVariant,
    dir: Direction,
    f_port: Option<u8>,
) -> FOptsCounterVariant {
    match variant {
        FOptsVariant::Original11 => FOptsCounterVariant::Original,
        FOptsVariant::Errata => FOptsCounterVariant::errata_for(dir, f_port),
    }
}

/// The clear FOpts of an uplink (1.1: decrypted with the NwkSEncKey and FCntUp).
pub(crate) fn uplink_f_opts(
    s: &SessionCtx,
    phy: &PhyPayload,
    f_cnt: u32,
    variant: FOptsVariant,
) -> Vec<u8> {
    let Some(mp) = phy.mac_payload() else {
        return Vec::new();
    };
    let mut f_opts = mp.fhdr.f_opts.as_slice().to_vec();
    if s.v1_1 && !f_opts.is_empty() {
        // At most 15 bytes by construction of `FOpts`: this cannot fail.
        let _ = crypto::encrypt_f_opts(
            &s.nwk_s_enc_key,
            Direction::Uplink,
            s.dev_addr,
            f_cnt,
            &mut f_opts,
            block(variant, Direction::Uplink, mp.f_port),
        );
    }
    f_opts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_setting_wins_over_the_ns_default() {
        let config = NsConfig::default();
        assert_eq!(variant_of(None, &config), FOptsVariant::Original11);
        let device = v3::EndDevice {
            mac_settings: Some(v3::MacSettings {
                f_opts_counter_variant: Some(v3::FOptsCounterVariant::Errata as i32),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(variant_of(Some(&device), &config), FOptsVariant::Errata);
        assert_eq!(
            block(FOptsVariant::Errata, Direction::Downlink, Some(3)),
            FOptsCounterVariant::ErrataAFCntDown
        );
        assert_eq!(
            block(FOptsVariant::Errata, Direction::Downlink, None),
            FOptsCounterVariant::ErrataNFCnt
        );
        assert_eq!(
            block(FOptsVariant::Original11, Direction::Downlink, Some(3)),
            FOptsCounterVariant::Original
        );
    }
}
