//! Frame-counter helpers: rebuilding the 32-bit FCnt from the 16 bits on the air.

/// Rebuilds the full 32-bit frame counter from the 16-bit `wire` value, given the `last`
/// accepted 32-bit value of the same counter (`None` for a fresh session).
///
/// Semantics: with `None` the result is `wire`. Otherwise the result is the smallest value
/// `v >= last` whose low 16 bits equal `wire`. So a frame repeating `last` comes back
/// *equal* to `last` (the caller tells a retransmission or replay from a new frame by
/// `v == last`), the next frame is `last + 1`, and a wire value below `last`'s low half
/// means the 16-bit counter rolled over (`last = 0xFFFF`, `wire = 0` → `0x1_0000`).
/// The gap `v - last` is not bounded here; checking it (e.g. MAX_FCNT_GAP of 1.0.x) is up
/// to the caller.
///
/// When no such value fits in 32 bits (the high half of `last` is `0xFFFF` and `wire` is
/// below its low half), the result wraps around to `wire` (high half 0), which is below
/// `last`: the caller must treat that as not acceptable (the counter is exhausted and the
/// device must rejoin; LoRaWAN forbids 32-bit roll-over within a session).
pub fn reconstruct_f_cnt(last: Option<u32>, wire: u16) -> u32 {
    let Some(last) = last else {
        return u32::from(wire);
    };
    let candidate = (last & 0xFFFF_0000) | u32::from(wire);
    if candidate >= last {
        candidate
    } else {
        candidate.wrapping_add(0x1_0000)
    }
}

#[cfg(test)]
mod tests {
    use super::reconstruct_f_cnt;

    #[test]
    fn fresh_session_takes_wire_value() {
        assert_eq!(reconstruct_f_cnt(None, 0), 0);
        assert_eq!(reconstruct_f_cnt(None, 0xFFFF), 0xFFFF);
    }

    #[test]
    fn same_next_and_gap() {
        assert_eq!(reconstruct_f_cnt(Some(5), 5), 5, "duplicate stays equal");
        assert_eq!(reconstruct_f_cnt(Some(5), 6), 6);
        assert_eq!(reconstruct_f_cnt(Some(5), 1000), 1000);
        assert_eq!(reconstruct_f_cnt(Some(0x1_0005), 0x0010), 0x1_0010);
        // An older wire value is read as the next round, not as the past.
        assert_eq!(reconstruct_f_cnt(Some(5), 4), 0x1_0004);
    }

    #[test]
    fn rollover_past_16_bits() {
        assert_eq!(reconstruct_f_cnt(Some(0xFFFF), 0x0000), 0x1_0000);
        assert_eq!(reconstruct_f_cnt(Some(0xFFFF), 0xFFFF), 0xFFFF);
        assert_eq!(reconstruct_f_cnt(Some(0xFFF0), 0x0003), 0x1_0003);
        assert_eq!(reconstruct_f_cnt(Some(0x2_FFFF), 0x0001), 0x3_0001);
    }

    #[test]
    fn wrap_at_u32_max() {
        assert_eq!(reconstruct_f_cnt(Some(u32::MAX), 0xFFFF), u32::MAX);
        assert_eq!(reconstruct_f_cnt(Some(u32::MAX - 1), 0xFFFF), u32::MAX);
        // No 32-bit value >= last: wraps to a value below last, which callers reject.
        let v = reconstruct_f_cnt(Some(u32::MAX), 0x0000);
        assert_eq!(v, 0);
        assert!(v < u32::MAX);
        assert_eq!(reconstruct_f_cnt(Some(0xFFFF_0010), 0x0005), 0x0005);
    }
}
