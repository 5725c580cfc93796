//! LinkADRReq ChMask / ChMaskCntl application (RP002-1.0.4 per region).

use band::{BandError, ChMaskBlock, ChannelMask, Region};
use proptest::prelude::*;

fn channels(mask: ChannelMask) -> Vec<usize> {
    mask.iter().collect()
}

fn fsb2() -> Vec<usize> {
    let mut v: Vec<usize> = (8..16).collect();
    v.push(65);
    v
}

#[test]
fn us915_fsb2_via_cntl7_then_chmask() {
    let p = Region::Us915.params();
    let all = p.default_channel_mask();
    // Block 1: ChMaskCntl 7 = all 125 kHz channels off, ChMask applies to 64..71 (bit 1 → 65).
    // Block 2: ChMaskCntl 0, ChMask 0xFF00 = channels 8..15.
    let got = p
        .apply_ch_mask(
            all,
            all,
            &[ChMaskBlock::new(0x0002, 7), ChMaskBlock::new(0xFF00, 0)],
        )
        .unwrap();
    assert_eq!(channels(got), fsb2());
}

#[test]
fn us915_fsb2_via_cntl5() {
    // RP002-1.0.4 ChMaskCntl 5: bit n switches FSB n+1 (channels 8n..8n+7 and 64+n).
    let p = Region::Us915.params();
    let all = p.default_channel_mask();
    let got = p
        .apply_ch_mask(all, all, &[ChMaskBlock::new(0x0002, 5)])
        .unwrap();
    assert_eq!(channels(got), fsb2());
    // FSB 1 and 8.
    let got = p
        .apply_ch_mask(all, all, &[ChMaskBlock::new(0x0081, 5)])
        .unwrap();
    let mut want: Vec<usize> = (0..8).chain(56..64).collect();
    want.extend([64, 71]);
    assert_eq!(channels(got), want);
    // RFU bits 8..15 are ignored.
    let got = p
        .apply_ch_mask(all, all, &[ChMaskBlock::new(0xFF02, 5)])
        .unwrap();
    assert_eq!(channels(got), fsb2());
}

#[test]
fn us915_cntl_rules() {
    let p = Region::Us915.params();
    let all = p.default_channel_mask();
    let none = ChannelMask::empty();
    // 6: all 125 kHz on, ChMask → 64..71.
    let got = p
        .apply_ch_mask(none, all, &[ChMaskBlock::new(0x0000, 6)])
        .unwrap();
    assert_eq!(channels(got), (0..64).collect::<Vec<_>>());
    let got = p
        .apply_ch_mask(none, all, &[ChMaskBlock::new(0x00FF, 6)])
        .unwrap();
    assert_eq!(got, all);
    // 0..3: 16-channel blocks; other blocks keep their state.
    let got = p
        .apply_ch_mask(none, all, &[ChMaskBlock::new(0x8001, 3)])
        .unwrap();
    assert_eq!(channels(got), vec![48, 63]);
    // 4: channels 64..71 only.
    let got = p
        .apply_ch_mask(all, all, &[ChMaskBlock::new(0x0001, 4)])
        .unwrap();
    let mut want: Vec<usize> = (0..64).collect();
    want.push(64);
    assert_eq!(channels(got), want);
    // Everything off is rejected.
    assert!(matches!(
        p.apply_ch_mask(all, all, &[ChMaskBlock::new(0x0000, 7)]),
        Err(BandError::NoChannelEnabled { .. })
    ));
    assert_eq!(p.apply_ch_mask(all, all, &[]), Err(BandError::EmptyChMask));
}

#[test]
fn au915_same_rules_as_us915() {
    let p = Region::Au915.params();
    let all = p.default_channel_mask();
    let got = p
        .apply_ch_mask(
            all,
            all,
            &[ChMaskBlock::new(0x0002, 7), ChMaskBlock::new(0xFF00, 0)],
        )
        .unwrap();
    assert_eq!(channels(got), fsb2());
    let got = p
        .apply_ch_mask(all, all, &[ChMaskBlock::new(0x0002, 5)])
        .unwrap();
    assert_eq!(channels(got), fsb2());
}

#[test]
fn eu868_rules() {
    let p = Region::Eu868.params();
    let defined = ChannelMask::first_n(8); // 3 defaults + 5 from the CFList
    let got = p
        .apply_ch_mask(defined, defined, &[ChMaskBlock::new(0x0007, 0)])
        .unwrap();
    assert_eq!(channels(got), vec![0, 1, 2]);
    // 6: all defined channels on, ChMask ignored.
    let got = p
        .apply_ch_mask(
            ChannelMask::first_n(1),
            defined,
            &[ChMaskBlock::new(0x0000, 6)],
        )
        .unwrap();
    assert_eq!(got, defined);
    // Reserved ChMaskCntl values.
    for cntl in [1, 2, 3, 4, 5, 7] {
        assert_eq!(
            p.apply_ch_mask(defined, defined, &[ChMaskBlock::new(0x0007, cntl)]),
            Err(BandError::InvalidChMaskCntl {
                region: Region::Eu868,
                cntl
            })
        );
    }
    // Enabling an undefined channel is rejected.
    assert_eq!(
        p.apply_ch_mask(defined, defined, &[ChMaskBlock::new(0x0101, 0)]),
        Err(BandError::UndefinedChannelEnabled {
            region: Region::Eu868,
            channel: 8
        })
    );
    assert!(matches!(
        p.apply_ch_mask(defined, defined, &[ChMaskBlock::new(0, 0)]),
        Err(BandError::NoChannelEnabled { .. })
    ));
}

#[test]
fn cn470_rules() {
    let p = Region::Cn470.params();
    let all = p.default_channel_mask();
    assert_eq!(all.count(), 96);
    let got = p
        .apply_ch_mask(all, all, &[ChMaskBlock::new(0x00FF, 0)])
        .unwrap();
    assert_eq!(got.count(), 96 - 8);
    let got = p
        .apply_ch_mask(ChannelMask::empty(), all, &[ChMaskBlock::new(0xFFFF, 5)])
        .unwrap();
    assert_eq!(channels(got), (80..96).collect::<Vec<_>>());
    let got = p
        .apply_ch_mask(ChannelMask::empty(), all, &[ChMaskBlock::new(0, 6)])
        .unwrap();
    assert_eq!(got, all);
    assert!(matches!(
        p.apply_ch_mask(all, all, &[ChMaskBlock::new(0, 7)]),
        Err(BandError::InvalidChMaskCntl { cntl: 7, .. })
    ));
}

#[test]
fn mask_helpers() {
    let mut m = ChannelMask::empty();
    assert!(m.is_empty());
    m.set(3, true);
    m.set(127, true);
    m.set(200, true); // ignored
    assert_eq!(channels(m), vec![3, 127]);
    m.set(3, false);
    assert_eq!(m.count(), 1);
    assert_eq!(ChannelMask::first_n(128).count(), 128);
    assert_eq!(
        channels(ChannelMask::range(8, 8)),
        (8..16).collect::<Vec<_>>()
    );
}

proptest! {
    /// A US915 result never contains channels beyond 71, and every error leaves the
    /// caller's mask untouched (the function is pure).
    #[test]
    fn us915_masks_stay_in_range(blocks in proptest::collection::vec((any::<u16>(), 0u8..8), 1..5)) {
        let p = Region::Us915.params();
        let all = p.default_channel_mask();
        let blocks: Vec<ChMaskBlock> = blocks.into_iter().map(|(m, c)| ChMaskBlock::new(m, c)).collect();
        if let Ok(mask) = p.apply_ch_mask(all, all, &blocks) {
            prop_assert!(mask.iter().all(|i| i < 72));
            prop_assert!(!mask.is_empty());
        }
    }

    /// Dynamic regions: a single ChMaskCntl 0 block yields exactly the ChMask bits, or an error.
    #[test]
    fn eu868_cntl0_is_the_mask(bits in any::<u16>(), n in 3usize..=16) {
        let p = Region::Eu868.params();
        let defined = ChannelMask::first_n(n);
        let res = p.apply_ch_mask(defined, defined, &[ChMaskBlock::new(bits, 0)]);
        if bits == 0 {
            prop_assert!(res.is_err());
        } else if u128::from(bits) & !defined.0 != 0 {
            let is_undefined = matches!(res, Err(BandError::UndefinedChannelEnabled { .. }));
            prop_assert!(is_undefined);
        } else {
            prop_assert_eq!(res.unwrap().0, u128::from(bits));
        }
    }
}
