//! Units and exact conversion to integer base units.
//!
//! Stock is kept as an integer count of the SKU's base unit — grams,
//! millilitres or pieces — so that no floating-point drift can creep into a
//! ledger. On the wire a quantity is a JSON number plus a unit; [`Quantity::to_base`]
//! converts it and refuses a unit of the wrong family (litres of beef) or a
//! value finer than one base unit (0.4 g).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The unit a SKU is stocked in. Every stock quantity inside the system is an
/// integer number of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseUnit {
    /// Grams (mass).
    G,
    /// Millilitres (volume).
    Ml,
    /// Pieces (count).
    Pcs,
}

impl BaseUnit {
    /// The unit's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            BaseUnit::G => "g",
            BaseUnit::Ml => "ml",
            BaseUnit::Pcs => "pcs",
        }
    }
}

impl fmt::Display for BaseUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit accepted on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Grams.
    G,
    /// Kilograms (1000 g).
    Kg,
    /// Millilitres.
    Ml,
    /// Litres (1000 ml).
    L,
    /// Pieces.
    Pcs,
}

impl Unit {
    /// The base unit this unit converts to, and the factor.
    pub fn base(self) -> (BaseUnit, i64) {
        match self {
            Unit::G => (BaseUnit::G, 1),
            Unit::Kg => (BaseUnit::G, 1000),
            Unit::Ml => (BaseUnit::Ml, 1),
            Unit::L => (BaseUnit::Ml, 1000),
            Unit::Pcs => (BaseUnit::Pcs, 1),
        }
    }

    /// The unit's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::G => "g",
            Unit::Kg => "kg",
            Unit::Ml => "ml",
            Unit::L => "l",
            Unit::Pcs => "pcs",
        }
    }
}

impl From<BaseUnit> for Unit {
    fn from(b: BaseUnit) -> Unit {
        match b {
            BaseUnit::G => Unit::G,
            BaseUnit::Ml => Unit::Ml,
            BaseUnit::Pcs => Unit::Pcs,
        }
    }
}

impl FromStr for Unit {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Unit, UnitError> {
        Ok(match s {
            "g" => Unit::G,
            "kg" => Unit::Kg,
            "ml" => Unit::Ml,
            "l" => Unit::L,
            "pcs" => Unit::Pcs,
            other => return Err(UnitError::Unknown(other.chars().take(16).collect())),
        })
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Unit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Unit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a quantity cannot be converted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitError {
    /// Not one of g, kg, ml, l, pcs.
    #[error("unknown unit {0:?} (expected g, kg, ml, l or pcs)")]
    Unknown(String),
    /// A unit of another family than the SKU's base unit.
    #[error("unit {unit} does not measure {base} (wrong unit family)")]
    WrongFamily {
        /// The unit given.
        unit: Unit,
        /// The SKU's base unit.
        base: BaseUnit,
    },
    /// Not a finite number, or too large to be a real stock quantity.
    #[error("quantity {0} is out of range")]
    OutOfRange(f64),
    /// Finer than one base unit.
    #[error("quantity {qty} {unit} is not a whole number of {base}")]
    NotWhole {
        /// The number given.
        qty: f64,
        /// The unit given.
        unit: Unit,
        /// The SKU's base unit.
        base: BaseUnit,
    },
}

/// Largest magnitude of a quantity in base units (a million tonnes of flour).
pub const MAX_BASE_QTY: i64 = 1_000_000_000_000;

/// A quantity as it travels on the wire: a number and a unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantity {
    /// The number, possibly fractional (`1.5` kg).
    pub qty: f64,
    /// Its unit.
    pub unit: Unit,
}

impl Quantity {
    /// Converts to an integer count of `base`, exactly.
    pub fn to_base(self, base: BaseUnit) -> Result<i64, UnitError> {
        let (family, factor) = self.unit.base();
        if family != base {
            return Err(UnitError::WrongFamily { unit: self.unit, base });
        }
        if !self.qty.is_finite() {
            return Err(UnitError::OutOfRange(self.qty));
        }
        let scaled = self.qty * factor as f64;
        if scaled.abs() > MAX_BASE_QTY as f64 {
            return Err(UnitError::OutOfRange(self.qty));
        }
        let whole = scaled.round();
        // Tolerate binary representation error (0.1 kg = 100.00000000000001 g),
        // nothing more.
        if (scaled - whole).abs() > 1e-6 {
            return Err(UnitError::NotWhole {
                qty: self.qty,
                unit: self.unit,
                base,
            });
        }
        Ok(whole as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(qty: f64, unit: Unit) -> Quantity {
        Quantity { qty, unit }
    }

    #[test]
    fn conversions() {
        let cases = [
            (q(1.5, Unit::Kg), BaseUnit::G, Ok(1500)),
            (q(0.1, Unit::Kg), BaseUnit::G, Ok(100)),
            (q(250.0, Unit::G), BaseUnit::G, Ok(250)),
            (q(2.0, Unit::L), BaseUnit::Ml, Ok(2000)),
            (q(-3.0, Unit::Pcs), BaseUnit::Pcs, Ok(-3)),
            (q(0.0, Unit::Ml), BaseUnit::Ml, Ok(0)),
        ];
        for (quantity, base, want) in cases {
            assert_eq!(quantity.to_base(base), want, "{quantity:?}");
        }
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            q(1.0, Unit::L).to_base(BaseUnit::G),
            Err(UnitError::WrongFamily { .. })
        ));
        assert!(matches!(
            q(1.0, Unit::Pcs).to_base(BaseUnit::Ml),
            Err(UnitError::WrongFamily { .. })
        ));
        assert!(matches!(
            q(0.4, Unit::G).to_base(BaseUnit::G),
            Err(UnitError::NotWhole { .. })
        ));
        assert!(matches!(
            q(0.5, Unit::Pcs).to_base(BaseUnit::Pcs),
            Err(UnitError::NotWhole { .. })
        ));
        assert!(matches!(
            q(f64::NAN, Unit::G).to_base(BaseUnit::G),
            Err(UnitError::OutOfRange(_))
        ));
        assert!(matches!(
            q(1e13, Unit::G).to_base(BaseUnit::G),
            Err(UnitError::OutOfRange(_))
        ));
        assert!("oz".parse::<Unit>().is_err());
    }
}
