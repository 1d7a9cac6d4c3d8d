//! Body filters: the request (write) filter, the streaming response (read)
//! filter, the strict JSON reader they share, and the DOM-based reference the
//! streaming filter is tested against.

pub mod json;
pub mod reference;
pub mod request;
pub mod response;
pub mod shadow;
