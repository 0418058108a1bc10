//! The random walk: exact decimals, never floats.

use rand::Rng;
use rust_decimal::{Decimal, RoundingStrategy};

const MIN_PRICE: Decimal = Decimal::from_parts(1, 0, 0, false, 2); // 0.01
/// The highest price a symbol can reach (one trillion): far from where
/// decimal arithmetic overflows, so a step can never panic.
pub const MAX_PRICE: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0); // 1e12
/// The highest sequence a resumed tick may carry: the next ones must fit.
pub const MAX_SEQ: u64 = u64::MAX / 2;

/// The next price: a move of up to `volatility_bp` basis points either way,
/// rounded to cents, kept within 0.01 ..= [`MAX_PRICE`]. Returns (price, change).
pub fn step(price: Decimal, volatility_bp: u32, rng: &mut impl Rng) -> (Decimal, Decimal) {
    let price = price.clamp(MIN_PRICE, MAX_PRICE);
    let bp = i64::from(volatility_bp.min(10_000));
    let moved = if bp == 0 {
        0
    } else {
        rng.random_range(-bp..=bp)
    };
    let delta = (price * Decimal::new(moved, 4))
        .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
    let next = (price + delta).clamp(MIN_PRICE, MAX_PRICE).round_dp(2);
    (next, next - price)
}

/// Where a new leader goes on from, given the last stored tick of a symbol
/// (`seq`, `price` as on the wire): that tick if it is sane, else an error
/// saying why (the caller logs it and starts the symbol afresh).
pub fn resume_from(seq: u64, price: &str) -> Result<(u64, Decimal), String> {
    let parsed: Decimal = price
        .parse()
        .map_err(|_| format!("price {price:?} is not a decimal"))?;
    if !(MIN_PRICE..=MAX_PRICE).contains(&parsed) {
        return Err(format!(
            "price {price} is outside {MIN_PRICE} ..= {MAX_PRICE}"
        ));
    }
    if seq > MAX_SEQ {
        return Err(format!("seq {seq} leaves no room for the next ticks"));
    }
    Ok((seq, parsed.round_dp(2)))
}

/// Two decimal places, as on the wire (`"189.20"`, `"-0.12"`).
pub fn cents(value: Decimal) -> String {
    let mut v = value.round_dp(2);
    v.rescale(2);
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::str::FromStr;

    #[test]
    fn stays_positive_and_in_cents() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut price = Decimal::from_str("0.05").unwrap();
        for _ in 0..10_000 {
            let (next, change) = step(price, 5000, &mut rng);
            assert!(next >= MIN_PRICE);
            assert_eq!(next - price, change);
            assert!(next.scale() <= 2, "{next}");
            price = next;
        }
    }

    #[test]
    fn bounded_moves() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let price = Decimal::from(100);
        for _ in 0..1000 {
            let (_, change) = step(price, 20, &mut rng);
            assert!(
                change.abs() <= Decimal::from_str("0.20").unwrap(),
                "{change}"
            );
        }
        assert_eq!(step(price, 0, &mut rng), (price, Decimal::ZERO));
    }

    #[test]
    fn extreme_prices_never_panic_and_stay_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for start in [Decimal::MAX, MAX_PRICE, Decimal::MIN, Decimal::ZERO] {
            let (next, _) = step(start, u32::MAX, &mut rng);
            assert!((MIN_PRICE..=MAX_PRICE).contains(&next), "{start} -> {next}");
        }
        assert_eq!(MAX_PRICE, Decimal::from(1_000_000_000_000u64));
    }

    #[test]
    fn only_sane_ticks_are_resumed() {
        assert_eq!(
            resume_from(41, "189.20"),
            Ok((41, Decimal::from_str("189.20").unwrap()))
        );
        for (seq, price) in [
            (1, "79228162514264337593543950335"),
            (1, "-5.00"),
            (1, "0"),
            (1, "NaN"),
            (1, ""),
            (u64::MAX, "10.00"),
        ] {
            assert!(resume_from(seq, price).is_err(), "{seq} {price:?}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(cents(Decimal::from_str("189.2").unwrap()), "189.20");
        assert_eq!(cents(Decimal::from_str("-0.1").unwrap()), "-0.10");
        assert_eq!(cents(Decimal::from(5)), "5.00");
    }
}
