//! `math` service messages.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The seven operations of `services.math.calculate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Add,
    Subtract,
    Multiply,
    Divide,
    Power,
    Sqrt,
    Mod,
}

impl Operation {
    pub const ALL: [Operation; 7] = [
        Self::Add,
        Self::Subtract,
        Self::Multiply,
        Self::Divide,
        Self::Power,
        Self::Sqrt,
        Self::Mod,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Subtract => "subtract",
            Self::Multiply => "multiply",
            Self::Divide => "divide",
            Self::Power => "power",
            Self::Sqrt => "sqrt",
            Self::Mod => "mod",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.as_str() == name)
    }

    /// Whether the operation takes a second operand `b`.
    pub const fn is_binary(self) -> bool {
        !matches!(self, Self::Sqrt)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `services.math.calculate` request.
///
/// `operation` is a plain string on the wire so that an unknown name gets the
/// contract's `unknown_operation` error rather than a generic decode error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CalculateRequest {
    /// One of add, subtract, multiply, divide, power, sqrt, mod.
    #[schemars(extend("enum" = ["add", "subtract", "multiply", "divide", "power", "sqrt", "mod"]))]
    pub operation: String,
    /// First operand (a finite JSON number).
    pub a: f64,
    /// Second operand; required by every operation but `sqrt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<f64>,
}

/// `services.math.<operation>` request: the operands only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OperandsRequest {
    pub a: f64,
    /// Required by every operation but `sqrt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<f64>,
}

/// Reply of every math endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CalculateReply {
    /// A whole number within ±2^53 is written as a JSON integer (`15`), any
    /// other result as a float (`2.5`, `1e300`), so typed decoders that
    /// want an integer for a whole result get one.
    #[serde(serialize_with = "whole_as_integer")]
    pub result: f64,
}

/// The largest magnitude at which every whole f64 is exactly an integer.
pub const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

/// `x` as a JSON integer when it is whole and within ±2^53, else as a float.
pub fn whole_as_integer<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() && x.fract() == 0.0 && x.abs() <= MAX_EXACT_INTEGER {
        // Exact: |x| <= 2^53 fits i64 and the cast loses nothing (and -0.0 is 0).
        #[allow(clippy::cast_possible_truncation, reason = "whole and within ±2^53")]
        s.serialize_i64(*x as i64)
    } else {
        s.serialize_f64(*x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.as_str()), Some(op));
            let json = serde_json::to_string(&op).unwrap();
            assert_eq!(serde_json::from_str::<Operation>(&json).unwrap(), op);
        }
        assert_eq!(Operation::parse("Add"), None);
    }

    #[test]
    fn calculate_request_round_trips_and_omits_missing_b() {
        let req = CalculateRequest {
            operation: "sqrt".into(),
            a: 9.0,
            b: None,
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json, json!({"operation": "sqrt", "a": 9.0}));
        assert_eq!(
            serde_json::from_value::<CalculateRequest>(json).unwrap(),
            req
        );
        let req: CalculateRequest =
            serde_json::from_str(r#"{"operation":"add","a":2,"b":3}"#).unwrap();
        assert_eq!(req.b, Some(3.0));
    }

    #[test]
    fn out_of_range_numbers_do_not_decode() {
        assert!(serde_json::from_str::<OperandsRequest>(r#"{"a":1e999,"b":1}"#).is_err());
        assert!(serde_json::from_str::<OperandsRequest>(r#"{"a":NaN,"b":1}"#).is_err());
        assert!(serde_json::from_str::<OperandsRequest>(r#"{"a":"1","b":1}"#).is_err());
    }

    #[test]
    fn reply_shape() {
        let reply = CalculateReply { result: 5.0 };
        assert_eq!(serde_json::to_string(&reply).unwrap(), r#"{"result":5}"#);
        for (x, text) in [
            (15.0, "15"),
            (-3.0, "-3"),
            (-0.0, "0"),
            (2.5, "2.5"),
            (MAX_EXACT_INTEGER, "9007199254740992"),
            (-MAX_EXACT_INTEGER, "-9007199254740992"),
            (MAX_EXACT_INTEGER * 2.0, "1.8014398509481984e+16"),
            (1e300, "1e+300"),
        ] {
            let json = serde_json::to_string(&CalculateReply { result: x }).unwrap();
            assert_eq!(json, format!(r#"{{"result":{text}}}"#), "{x}");
            let back: CalculateReply = serde_json::from_str(&json).unwrap();
            assert_eq!(back.result, x, "{json}");
        }
        assert_eq!(
            serde_json::from_value::<CalculateReply>(json!({"result": 5})).unwrap(),
            reply
        );
    }
}
