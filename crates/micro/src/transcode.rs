//! JSON ↔ protobuf transcoding with runtime descriptors (prost-reflect).

use bytes::Bytes;
use micro_core::Status;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

/// Decodes a JSON message into protobuf bytes of type `desc`.
///
/// An empty body is the empty message. Unknown fields and wrong types are
/// `InvalidArgument` errors naming the problem.
pub fn json_to_proto(desc: &MessageDescriptor, json: &[u8], id: &str) -> Result<Bytes, Status> {
    let json = if json.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { json };
    let mut de = serde_json::Deserializer::from_slice(json);
    let msg = DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &DeserializeOptions::new())
        .map_err(|e| Status::bad_request(id, format!("invalid request for {}: {e}", desc.name())))?;
    de.end().map_err(|e| Status::bad_request(id, format!("invalid JSON: {e}")))?;
    Ok(Bytes::from(msg.encode_to_vec()))
}

/// Encodes protobuf bytes of type `desc` as JSON (proto field names, defaults included).
pub fn proto_to_json(desc: &MessageDescriptor, proto: &[u8], id: &str) -> Result<Bytes, Status> {
    let msg = DynamicMessage::decode(desc.clone(), proto)
        .map_err(|e| Status::internal(id, format!("undecodable {} message: {e}", desc.name())))?;
    let mut out = Vec::with_capacity(proto.len() * 2 + 2);
    let mut ser = serde_json::Serializer::new(&mut out);
    let opts = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
    msg.serialize_with_options(&mut ser, &opts)
        .map_err(|e| Status::internal(id, format!("encoding {} as JSON: {e}", desc.name())))?;
    Ok(Bytes::from(out))
}
