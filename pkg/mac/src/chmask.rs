//! Turning a wanted channel mask into LinkADRReq ChMask blocks (RP002 §2.x "LinkAdrReq
//! command" of each region; 1.0.4 §5.3 on contiguous blocks).

use band::{ChMaskBlock, ChannelLayout, ChannelMask, Region, RegionParams};

/// The 16-bit word of `m` for channels `16·g … 16·g+15`.
fn word(m: ChannelMask, g: usize) -> u16 {
    (m.0 >> (16 * g)) as u16
}

/// The fewest ChMask blocks that take a device from `current` to `target`, given the
/// channels it has `defined`; `None` if the region cannot express `target` (the result is
/// checked with [`RegionParams::apply_ch_mask`]). Always at least one block, so a
/// LinkADRReq that only changes DR, TX power or NbTrans keeps the mask.
pub fn ch_mask_blocks(
    params: &RegionParams,
    current: ChannelMask,
    target: ChannelMask,
    defined: ChannelMask,
) -> Option<Vec<ChMaskBlock>> {
    let mut candidates: Vec<Vec<ChMaskBlock>> = Vec::new();
    match (params.region, params.channel_layout) {
        (Region::Us915 | Region::Au915, _) => {
            // Incremental: only the 16-channel groups (cntl 0..3) and the 500 kHz channels
            // (cntl 4) that differ.
            let mut inc: Vec<ChMaskBlock> = (0..4)
                .filter(|&g| word(current, g) != word(target, g))
                .map(|g| ChMaskBlock::new(word(target, g), g as u8))
                .collect();
            if word(current, 4) & 0xff != word(target, 4) & 0xff {
                inc.push(ChMaskBlock::new(word(target, 4) & 0xff, 4));
            }
            candidates.push(inc);
            // From scratch: cntl 6 (all 125 kHz on) or 7 (all off) with the 500 kHz bits,
            // then the non-empty 125 kHz groups.
            let narrow = target.0 & ChannelMask::first_n(64).0;
            let wide = word(target, 4) & 0xff;
            if narrow == ChannelMask::first_n(64).0 {
                candidates.push(vec![ChMaskBlock::new(wide, 6)]);
            } else {
                let mut v = vec![ChMaskBlock::new(wide, 7)];
                v.extend(
                    (0..4)
                        .filter(|&g| word(target, g) != 0)
                        .map(|g| ChMaskBlock::new(word(target, g), g as u8)),
                );
                candidates.push(v);
            }
        }
        (Region::Cn470A20 | Region::Cn470B20, _) => {
            groups(&mut candidates, current, target, defined, 4, 6, Some(7));
        }
        (Region::Cn470A26 | Region::Cn470B26, _) => {
            groups(&mut candidates, current, target, defined, 3, 3, Some(4));
        }
        (_, ChannelLayout::Fixed { .. }) => {
            groups(&mut candidates, current, target, defined, 6, 6, None);
        }
        (_, ChannelLayout::Dynamic { .. }) => {
            candidates.push(vec![ChMaskBlock::new(word(target, 0), 0)]);
        }
    }
    // The shortest candidate that really yields `target`; ties go to the later (from
    // scratch) one, which does not depend on the NS's view of the device's mask.
    let mut best: Option<Vec<ChMaskBlock>> = None;
    for mut c in candidates {
        if c.is_empty() {
            // Nothing to change: repeat one group as it is (a no-op block).
            let g = (0..8).find(|&g| word(target, g) != 0).unwrap_or(0);
            c.push(ChMaskBlock::new(word(target, g), g as u8));
        }
        if params.apply_ch_mask(current, defined, &c).ok() != Some(target) {
            continue;
        }
        if best.as_ref().is_none_or(|b| c.len() <= b.len()) {
            best = Some(c);
        }
    }
    best
}

/// Candidates for regions with `n` 16-channel groups (cntl 0..n-1), an all-on cntl and
/// optionally an all-off cntl.
fn groups(
    candidates: &mut Vec<Vec<ChMaskBlock>>,
    current: ChannelMask,
    target: ChannelMask,
    defined: ChannelMask,
    n: usize,
    all_on: u8,
    all_off: Option<u8>,
) {
    candidates.push(
        (0..n)
            .filter(|&g| word(current, g) != word(target, g))
            .map(|g| ChMaskBlock::new(word(target, g), g as u8))
            .collect(),
    );
    if target == defined {
        candidates.push(vec![ChMaskBlock::new(0, all_on)]);
    } else if let Some(off) = all_off {
        let mut v = vec![ChMaskBlock::new(0, off)];
        v.extend(
            (0..n)
                .filter(|&g| word(target, g) != 0)
                .map(|g| ChMaskBlock::new(word(target, g), g as u8)),
        );
        candidates.push(v);
    }
}
