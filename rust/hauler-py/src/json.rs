//! JSON between Python values and text, with serde_json.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

/// Serializes a JSON-compatible Python value (dict with str keys, list, tuple, str, int,
/// float, bool, None).
struct PyJson<'a, 'py>(&'a Bound<'py, PyAny>);

impl Serialize for PyJson<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_none() {
            s.serialize_unit()
        } else if let Ok(b) = v.cast::<PyBool>() {
            s.serialize_bool(b.is_true())
        } else if let Ok(st) = v.cast::<PyString>() {
            s.serialize_str(st.to_str().map_err(S::Error::custom)?)
        } else if v.is_instance_of::<PyInt>() {
            if let Ok(i) = v.extract::<i64>() {
                s.serialize_i64(i)
            } else if let Ok(u) = v.extract::<u64>() {
                s.serialize_u64(u)
            } else {
                Err(S::Error::custom("integer does not fit in 64 bits"))
            }
        } else if let Ok(f) = v.cast::<PyFloat>() {
            let f = f.value();
            if f.is_finite() {
                s.serialize_f64(f)
            } else {
                Err(S::Error::custom(format!("{f} is not valid JSON")))
            }
        } else if let Ok(d) = v.cast::<PyDict>() {
            let mut m = s.serialize_map(Some(d.len()))?;
            for (k, val) in d.iter() {
                let k = k
                    .cast::<PyString>()
                    .map_err(|_| S::Error::custom("dict keys must be str"))?;
                m.serialize_entry(k.to_str().map_err(S::Error::custom)?, &PyJson(&val))?;
            }
            m.end()
        } else if let Ok(l) = v.cast::<PyList>() {
            let mut seq = s.serialize_seq(Some(l.len()))?;
            for item in l.iter() {
                seq.serialize_element(&PyJson(&item))?;
            }
            seq.end()
        } else if let Ok(t) = v.cast::<PyTuple>() {
            let mut seq = s.serialize_seq(Some(t.len()))?;
            for item in t.iter() {
                seq.serialize_element(&PyJson(&item))?;
            }
            seq.end()
        } else {
            let ty = v
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into());
            Err(S::Error::custom(format!(
                "object of type {ty} is not JSON-compatible"
            )))
        }
    }
}

/// Python value → JSON text.
pub(crate) fn to_json(v: &Bound<'_, PyAny>) -> Result<String, String> {
    serde_json::to_string(&PyJson(v)).map_err(|e| e.to_string())
}

/// JSON value → Python value.
pub(crate) fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let l = PyList::empty(py);
            for item in items {
                l.append(value_to_py(py, item)?)?;
            }
            l.into_any()
        }
        Value::Object(map) => {
            let d = PyDict::new(py);
            for (k, item) in map {
                d.set_item(k, value_to_py(py, item)?)?;
            }
            d.into_any()
        }
    })
}

/// JSON text → Python value.
pub(crate) fn from_json<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        crate::errors::hauler_err(
            "SerializationError",
            format!("stored job arguments are not valid JSON: {e}"),
        )
    })?;
    value_to_py(py, &v)
}
