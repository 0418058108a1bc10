//! The random walk: exact decimals, never floats.

use rand::Rng;
use rust_decimal::{Decimal, RoundingStrategy};

const MIN_PRICE: Decimal = Decimal::from_parts(1, 0, 0, false, 2); // 0.01

/// The next price: a move of up to `volatility_bp` basis points either way,
/// rounded to cents, never below 0.01. Returns (price, change).
pub fn step(price: Decimal, volatility_bp: u32, rng: &mut impl Rng) -> (Decimal, Decimal) {
    let bp = i64::from(volatility_bp);
    let moved = if bp == 0 {
        0
    } else {
        rng.random_range(-bp..=bp)
    };
    let delta = (price * Decimal::new(moved, 4))
        .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
    let next = (price + delta).max(MIN_PRICE).round_dp(2);
    (next, next - price)
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
    fn formatting() {
        assert_eq!(cents(Decimal::from_str("189.2").unwrap()), "189.20");
        assert_eq!(cents(Decimal::from_str("-0.1").unwrap()), "-0.10");
        assert_eq!(cents(Decimal::from(5)), "5.00");
    }
}
