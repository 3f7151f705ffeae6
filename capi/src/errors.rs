//! Return codes: a [`ClientError`] becomes an OpenClovis `ClRcT` or an SA
//! Forum `SaAisErrorT`.
//!
//! A `ClRcT` is `CL_RC(CL_CID_CKPT, code)`: the [`ErrorCode`]'s value with
//! the checkpoint component id (0x16) in the upper 16 bits, exactly what
//! the server sends; `CL_OK` is 0. An `SaAisErrorT` is the SA Forum code
//! that `ErrorCode::sa_ais_name` names (one table in `proto` for the
//! server's logs, the docs and this library). The table in `docs/c-api.md`
//! lists both for every code and is checked against this module by
//! `tests/capi.rs`.

use ckpt_client::ClientError;
use ckpt_proto::ErrorCode;

/// `CL_OK`.
pub const CL_OK: u32 = 0;

/// `SA_AIS_OK`.
pub const SA_AIS_OK: u32 = 1;

/// Every `SaAisErrorT` of `saAis.h`, by name.
pub const SA_AIS_ERRORS: &[(&str, u32)] = &[
    ("SA_AIS_OK", 1),
    ("SA_AIS_ERR_LIBRARY", 2),
    ("SA_AIS_ERR_VERSION", 3),
    ("SA_AIS_ERR_INIT", 4),
    ("SA_AIS_ERR_TIMEOUT", 5),
    ("SA_AIS_ERR_TRY_AGAIN", 6),
    ("SA_AIS_ERR_INVALID_PARAM", 7),
    ("SA_AIS_ERR_NO_MEMORY", 8),
    ("SA_AIS_ERR_BAD_HANDLE", 9),
    ("SA_AIS_ERR_BUSY", 10),
    ("SA_AIS_ERR_ACCESS", 11),
    ("SA_AIS_ERR_NOT_EXIST", 12),
    ("SA_AIS_ERR_NAME_TOO_LONG", 13),
    ("SA_AIS_ERR_EXIST", 14),
    ("SA_AIS_ERR_NO_SPACE", 15),
    ("SA_AIS_ERR_INTERRUPT", 16),
    ("SA_AIS_ERR_NAME_NOT_FOUND", 17),
    ("SA_AIS_ERR_NO_RESOURCES", 18),
    ("SA_AIS_ERR_NOT_SUPPORTED", 19),
    ("SA_AIS_ERR_BAD_OPERATION", 20),
    ("SA_AIS_ERR_FAILED_OPERATION", 21),
    ("SA_AIS_ERR_MESSAGE_ERROR", 22),
    ("SA_AIS_ERR_QUEUE_FULL", 23),
    ("SA_AIS_ERR_QUEUE_NOT_AVAILABLE", 24),
    ("SA_AIS_ERR_BAD_FLAGS", 25),
    ("SA_AIS_ERR_TOO_BIG", 26),
    ("SA_AIS_ERR_NO_SECTIONS", 27),
    ("SA_AIS_ERR_NO_OP", 28),
    ("SA_AIS_ERR_REPAIR_PENDING", 29),
    ("SA_AIS_ERR_NO_BINDINGS", 30),
    ("SA_AIS_ERR_UNAVAILABLE", 31),
];

/// The value of an `SaAisErrorT` name, `None` for a name `saAis.h` lacks.
pub fn sa_value(name: &str) -> Option<u32> {
    SA_AIS_ERRORS
        .iter()
        .find(|(known, _)| *known == name)
        .map(|&(_, value)| value)
}

/// The `ClRcT` a failing clCkpt* call returns for `code`.
pub fn cl_rc(code: ErrorCode) -> u32 {
    code.rc()
}

/// The `SaAisErrorT` a failing saCkpt* call returns for `code`.
pub fn sa_error(code: ErrorCode) -> u32 {
    // Every name in proto's table is one of saAis.h's (a unit test checks
    // it); LIBRARY would only hide a typo there.
    sa_value(code.sa_ais_name()).unwrap_or(2)
}

/// The [`ErrorCode`] behind a `ClRcT` (with or without the component id);
/// `None` for `CL_OK` and for values no code has.
pub fn code_from_cl(rc: u32) -> Option<ErrorCode> {
    ErrorCode::from_code(rc)
}

/// The codes that become `sa` in the SA Forum API, in numeric order: the
/// reverse direction of [`sa_error`], which is many to one (four codes are
/// `SA_AIS_ERR_INVALID_PARAM`).
pub fn codes_from_sa(sa: u32) -> Vec<ErrorCode> {
    ErrorCode::ALL
        .iter()
        .copied()
        .filter(|&code| sa_error(code) == sa)
        .collect()
}

/// Which API a handle belongs to, and so which codes its calls return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenClovis `clCkpt*`: `ClRcT`.
    Cl,
    /// SA Forum `saCkpt*`: `SaAisErrorT`.
    Sa,
}

impl Api {
    /// The success value.
    pub fn ok(self) -> u32 {
        match self {
            Api::Cl => CL_OK,
            Api::Sa => SA_AIS_OK,
        }
    }

    /// The return value of a failed call.
    pub fn error(self, code: ErrorCode) -> u32 {
        match self {
            Api::Cl => cl_rc(code),
            Api::Sa => sa_error(code),
        }
    }

    /// The return value of a call's outcome.
    pub fn result(self, result: &Result<(), ClientError>) -> u32 {
        match result {
            Ok(()) => self.ok(),
            Err(error) => self.error(error.code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_an_sa_forum_value() {
        for &code in ErrorCode::ALL {
            assert!(
                sa_value(code.sa_ais_name()).is_some(),
                "{} maps to {}, which saAis.h lacks",
                code.cl_name(),
                code.sa_ais_name()
            );
            assert!(codes_from_sa(sa_error(code)).contains(&code));
            assert_eq!(code_from_cl(cl_rc(code)), Some(code));
        }
        assert_eq!(cl_rc(ErrorCode::NoSections), 0x0016_0101);
        assert_eq!(sa_error(ErrorCode::InvalidHandle), 9);
        assert_eq!(sa_error(ErrorCode::NoSections), 27);
        assert_eq!(code_from_cl(CL_OK), None);
    }

    /// docs/c-api.md's table, row by row, is what the saCkpt* and clCkpt*
    /// calls return; and every code has its row.
    #[test]
    fn the_documented_table_is_the_mapping() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/c-api.md"))
            .expect("docs/c-api.md");
        let table = doc
            .split_once("### ckpt ErrorCode → ClRcT → SaAisErrorT")
            .expect("the table's heading")
            .1;
        let mut rows = 0;
        for line in table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
        {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect();
            let rc = u32::from_str_radix(cells[2].trim_start_matches("0x"), 16).unwrap();
            let code = code_from_cl(rc).unwrap();
            assert_eq!(Api::Cl.error(code), rc, "{line}");
            assert_eq!(code.cl_name(), cells[1], "{line}");
            assert_eq!(
                Api::Sa.error(code),
                cells[4].parse::<u32>().unwrap(),
                "{line}"
            );
            assert_eq!(sa_value(&cells[3]), Some(Api::Sa.error(code)), "{line}");
            rows += 1;
        }
        assert_eq!(rows, ErrorCode::ALL.len());
    }
}
