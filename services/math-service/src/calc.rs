//! The arithmetic itself: pure, so every rule is unit-tested.

use protocol::math::{CalculateReply, Operation};
use protocol::{ErrorCode, ServiceError};

/// Applies `op` to `a` (and `b`), with the contract's errors.
pub fn calculate(op: Operation, a: f64, b: Option<f64>) -> Result<CalculateReply, ServiceError> {
    for (name, value) in [("a", Some(a)), ("b", b)] {
        if let Some(v) = value
            && !v.is_finite()
        {
            return Err(ServiceError::invalid_request(format!(
                "operand {name} must be a finite number"
            )));
        }
    }
    let b = match (op.is_binary(), b) {
        (true, Some(b)) => b,
        (true, None) => {
            return Err(ServiceError::invalid_request(format!(
                "missing field `b`: {op} takes two operands"
            )));
        }
        (false, _) => 0.0,
    };
    let result = match op {
        Operation::Add => a + b,
        Operation::Subtract => a - b,
        Operation::Multiply => a * b,
        Operation::Divide | Operation::Mod if b == 0.0 => {
            return Err(ServiceError::new(
                ErrorCode::DivisionByZero,
                format!("cannot {op} {a} by zero"),
            ));
        }
        Operation::Divide => a / b,
        Operation::Mod => a % b,
        Operation::Power => a.powf(b),
        Operation::Sqrt if a < 0.0 => {
            return Err(ServiceError::new(
                ErrorCode::DomainError,
                format!("cannot take the square root of a negative number ({a})"),
            ));
        }
        Operation::Sqrt => a.sqrt(),
    };
    if result.is_nan() {
        return Err(ServiceError::new(
            ErrorCode::DomainError,
            format!("{op} of {a} and {b} is not a real number"),
        ));
    }
    if result.is_infinite() {
        return Err(ServiceError::new(
            ErrorCode::Overflow,
            format!("{op} of {a} and {b} overflows a 64-bit float"),
        ));
    }
    Ok(CalculateReply { result })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation::*;

    fn ok(op: Operation, a: f64, b: Option<f64>) -> f64 {
        calculate(op, a, b).unwrap().result
    }

    fn err(op: Operation, a: f64, b: Option<f64>) -> ErrorCode {
        calculate(op, a, b).unwrap_err().code
    }

    #[test]
    fn every_operation() {
        assert_eq!(ok(Add, 2.0, Some(3.0)), 5.0);
        assert_eq!(ok(Subtract, 2.0, Some(3.0)), -1.0);
        assert_eq!(ok(Multiply, 2.5, Some(4.0)), 10.0);
        assert_eq!(ok(Divide, 7.0, Some(2.0)), 3.5);
        assert_eq!(ok(Power, 2.0, Some(10.0)), 1024.0);
        assert_eq!(ok(Sqrt, 9.0, None), 3.0);
        assert_eq!(ok(Sqrt, 9.0, Some(123.0)), 3.0, "b is ignored by sqrt");
        assert_eq!(ok(Mod, 7.0, Some(3.0)), 1.0);
    }

    #[test]
    fn mod_is_truncated_like_rust() {
        assert_eq!(ok(Mod, -7.0, Some(3.0)), -1.0);
        assert_eq!(ok(Mod, 7.0, Some(-3.0)), 1.0);
        assert_eq!(ok(Mod, 7.5, Some(2.0)), 1.5);
    }

    #[test]
    fn errors() {
        assert_eq!(err(Divide, 1.0, Some(0.0)), ErrorCode::DivisionByZero);
        assert_eq!(err(Divide, 1.0, Some(-0.0)), ErrorCode::DivisionByZero);
        assert_eq!(err(Mod, 1.0, Some(0.0)), ErrorCode::DivisionByZero);
        assert_eq!(err(Sqrt, -1.0, None), ErrorCode::DomainError);
        assert_eq!(err(Power, -8.0, Some(1.0 / 3.0)), ErrorCode::DomainError);
        assert_eq!(err(Multiply, 1e308, Some(10.0)), ErrorCode::Overflow);
        assert_eq!(err(Power, 10.0, Some(400.0)), ErrorCode::Overflow);
        assert_eq!(err(Add, f64::MAX, Some(f64::MAX)), ErrorCode::Overflow);
        assert_eq!(err(Add, 1.0, None), ErrorCode::InvalidRequest);
        assert_eq!(err(Add, f64::NAN, Some(1.0)), ErrorCode::InvalidRequest);
        assert_eq!(
            err(Add, 1.0, Some(f64::INFINITY)),
            ErrorCode::InvalidRequest
        );
    }
}
