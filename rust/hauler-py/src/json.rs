//! JSON between Python values and text, with serde_json.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

/// The most levels of nested lists and dicts a payload may have, counting the job's own
/// field dict: serde_json refuses deeper documents when it reads them back, so deeper
/// values are refused when queued instead of stored undecodable.
pub(crate) const MAX_DEPTH: usize = 127;

/// Serializes a JSON-compatible Python value (dict with str keys, list, tuple, str, int,
/// float, bool, None) that sits `depth` containers deep.
///
/// An error names where the bad value is: the field (a key of the outermost dict), then
/// `['key']` and `[index]` segments, as in `tags[2]['id']: integer ... does not fit`.
struct PyJson<'a, 'py> {
    value: &'a Bound<'py, PyAny>,
    depth: usize,
}

/// Put `segment` in front of a nested value's error.
fn at<E: serde::ser::Error>(segment: std::fmt::Arguments<'_>, e: E) -> E {
    let inner = e.to_string();
    let sep = if inner.starts_with('[') { "" } else { ": " };
    E::custom(format!("{segment}{sep}{inner}"))
}

impl PyJson<'_, '_> {
    fn nested<S: Serializer>(&self) -> Result<usize, S::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(S::Error::custom(format!(
                "nested too deeply: a payload holds at most {MAX_DEPTH} levels of lists \
                 and dicts, counting the job's own fields"
            )));
        }
        Ok(depth)
    }
}

impl Serialize for PyJson<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.value;
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
                Err(S::Error::custom(format!(
                    "integer {v} does not fit in 64 bits (stored integers range from \
                     -2**63 to 2**64 - 1)"
                )))
            }
        } else if let Ok(f) = v.cast::<PyFloat>() {
            let f = f.value();
            if f.is_finite() {
                s.serialize_f64(f)
            } else {
                Err(S::Error::custom(format!("{f} is not valid JSON")))
            }
        } else if let Ok(d) = v.cast::<PyDict>() {
            let depth = self.nested::<S>()?;
            let mut m = s.serialize_map(Some(d.len()))?;
            for (k, val) in d.iter() {
                let k = k
                    .cast::<PyString>()
                    .map_err(|_| S::Error::custom("dict keys must be str"))?;
                let key = k.to_str().map_err(S::Error::custom)?;
                let value = PyJson { value: &val, depth };
                m.serialize_entry(key, &value).map_err(|e| {
                    if depth == 1 {
                        at(format_args!("{key}"), e) // a field name
                    } else {
                        at(format_args!("[{key:?}]"), e)
                    }
                })?;
            }
            m.end()
        } else if let Ok(l) = v.cast::<PyList>() {
            let depth = self.nested::<S>()?;
            let mut seq = s.serialize_seq(Some(l.len()))?;
            for (i, item) in l.iter().enumerate() {
                seq.serialize_element(&PyJson {
                    value: &item,
                    depth,
                })
                .map_err(|e| at(format_args!("[{i}]"), e))?;
            }
            seq.end()
        } else if let Ok(t) = v.cast::<PyTuple>() {
            let depth = self.nested::<S>()?;
            let mut seq = s.serialize_seq(Some(t.len()))?;
            for (i, item) in t.iter().enumerate() {
                seq.serialize_element(&PyJson {
                    value: &item,
                    depth,
                })
                .map_err(|e| at(format_args!("[{i}]"), e))?;
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
    serde_json::to_string(&PyJson { value: v, depth: 0 }).map_err(|e| e.to_string())
}

/// The fields `names` of `obj` as a JSON object, when each is a plain value (exactly
/// str, int, float, bool or None): the values the job codec passes through as they are,
/// so the text is the one [`to_json`] makes of the codec's dict. `None` when a field is
/// missing or not plain, or a plain value cannot be stored (a lone surrogate, an integer
/// past 64 bits, a float NaN): the codec's dict, or its error, decides then.
pub(crate) fn to_json_fields(
    obj: &Bound<'_, PyAny>,
    names: &[Bound<'_, PyString>],
) -> Option<String> {
    serde_json::to_string(&PlainFields { obj, names }).ok()
}

struct PlainFields<'a, 'py> {
    obj: &'a Bound<'py, PyAny>,
    names: &'a [Bound<'py, PyString>],
}

fn is_plain(v: &Bound<'_, PyAny>) -> bool {
    v.is_none()
        || v.is_exact_instance_of::<PyString>()
        || v.is_exact_instance_of::<PyInt>()
        || v.is_exact_instance_of::<PyBool>()
        || v.is_exact_instance_of::<PyFloat>()
}

impl Serialize for PlainFields<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.names.len()))?;
        for name in self.names {
            let value = self
                .obj
                .getattr(name)
                .ok()
                .filter(is_plain)
                .ok_or_else(|| S::Error::custom("not a plain value"))?;
            let key = name.to_str().map_err(S::Error::custom)?;
            m.serialize_entry(
                key,
                &PyJson {
                    value: &value,
                    depth: 1,
                },
            )?;
        }
        m.end()
    }
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
