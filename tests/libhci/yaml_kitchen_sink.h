// A test-only message type with every kind of field ParseYaml/ToYaml handle (all scalar types,
// quantities, enums, repeated fields, maps with non-string keys, oneofs, proto3 optional and the
// well-known types), built at run time so that no .proto file is added to the library. Shared by
// tests/libhci/yaml_test.cc and fuzz/yaml_fuzzer.cc.
#pragma once

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/message.h>
#include <google/protobuf/text_format.h>

#include <cstdlib>
#include <iostream>

namespace hci::testing {

inline constexpr char kKitchenSinkProto[] = R"pb(
  name: "hci_test/kitchen_sink.proto"
  package: "hci.test"
  syntax: "proto3"
  dependency: "google/protobuf/duration.proto"
  dependency: "google/protobuf/struct.proto"
  dependency: "google/protobuf/timestamp.proto"
  dependency: "google/protobuf/wrappers.proto"
  enum_type {
    name: "Color"
    value { name: "COLOR_UNSPECIFIED" number: 0 }
    value { name: "COLOR_RED" number: 1 }
    value { name: "COLOR_DARK_BLUE" number: 2 }
    value { name: "COLOR_L2" number: 3 }
  }
  message_type {
    name: "KitchenSink"
    field { name: "i32" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
    field { name: "i64" number: 2 label: LABEL_OPTIONAL type: TYPE_INT64 }
    field { name: "u32" number: 3 label: LABEL_OPTIONAL type: TYPE_UINT32 }
    field { name: "u64" number: 4 label: LABEL_OPTIONAL type: TYPE_UINT64 }
    field { name: "s32" number: 5 label: LABEL_OPTIONAL type: TYPE_SINT32 }
    field { name: "s64" number: 6 label: LABEL_OPTIONAL type: TYPE_SINT64 }
    field { name: "fx32" number: 7 label: LABEL_OPTIONAL type: TYPE_FIXED32 }
    field { name: "fx64" number: 8 label: LABEL_OPTIONAL type: TYPE_FIXED64 }
    field { name: "sfx32" number: 9 label: LABEL_OPTIONAL type: TYPE_SFIXED32 }
    field { name: "sfx64" number: 10 label: LABEL_OPTIONAL type: TYPE_SFIXED64 }
    field { name: "flt" number: 11 label: LABEL_OPTIONAL type: TYPE_FLOAT }
    field { name: "dbl" number: 12 label: LABEL_OPTIONAL type: TYPE_DOUBLE }
    field { name: "flag" number: 13 label: LABEL_OPTIONAL type: TYPE_BOOL }
    field { name: "text" number: 14 label: LABEL_OPTIONAL type: TYPE_STRING }
    field { name: "blob" number: 15 label: LABEL_OPTIONAL type: TYPE_BYTES }
    field {
      name: "color"
      number: 16
      label: LABEL_OPTIONAL
      type: TYPE_ENUM
      type_name: ".hci.test.Color"
    }
    field { name: "ints" number: 17 label: LABEL_REPEATED type: TYPE_INT64 }
    field { name: "doubles" number: 18 label: LABEL_REPEATED type: TYPE_DOUBLE }
    field { name: "strings" number: 19 label: LABEL_REPEATED type: TYPE_STRING }
    field { name: "blobs" number: 20 label: LABEL_REPEATED type: TYPE_BYTES }
    field {
      name: "colors"
      number: 21
      label: LABEL_REPEATED
      type: TYPE_ENUM
      type_name: ".hci.test.Color"
    }
    field {
      name: "by_id"
      number: 22
      label: LABEL_REPEATED
      type: TYPE_MESSAGE
      type_name: ".hci.test.KitchenSink.ByIdEntry"
    }
    field {
      name: "by_flag"
      number: 23
      label: LABEL_REPEATED
      type: TYPE_MESSAGE
      type_name: ".hci.test.KitchenSink.ByFlagEntry"
    }
    field {
      name: "children"
      number: 24
      label: LABEL_REPEATED
      type: TYPE_MESSAGE
      type_name: ".hci.test.KitchenSink.ChildrenEntry"
    }
    field {
      name: "timeout"
      number: 25
      label: LABEL_OPTIONAL
      type: TYPE_MESSAGE
      type_name: ".google.protobuf.Duration"
    }
    field {
      name: "at"
      number: 26
      label: LABEL_OPTIONAL
      type: TYPE_MESSAGE
      type_name: ".google.protobuf.Timestamp"
    }
    field {
      name: "maybe_int"
      number: 27
      label: LABEL_OPTIONAL
      type: TYPE_MESSAGE
      type_name: ".google.protobuf.Int32Value"
    }
    field {
      name: "maybe_text"
      number: 28
      label: LABEL_OPTIONAL
      type: TYPE_MESSAGE
      type_name: ".google.protobuf.StringValue"
    }
    field {
      name: "maybe_flag"
      number: 29
      label: LABEL_OPTIONAL
      type: TYPE_MESSAGE
      type_name: ".google.protobuf.BoolValue"
    }
    field {
      name: "any_value"
      number: 30
      label: LABEL_OPTIONAL
      type: TYPE_MESSAGE
      type_name: ".google.protobuf.Value"
    }
    field {
      name: "list"
      number: 31
      label: LABEL_OPTIONAL
      type: TYPE_MESSAGE
      type_name: ".google.protobuf.ListValue"
    }
    field {
      name: "meta"
      number: 32
      label: LABEL_OPTIONAL
      type: TYPE_MESSAGE
      type_name: ".google.protobuf.Struct"
    }
    field { name: "name" number: 33 label: LABEL_OPTIONAL type: TYPE_STRING oneof_index: 0 }
    field {
      name: "child"
      number: 34
      label: LABEL_OPTIONAL
      type: TYPE_MESSAGE
      type_name: ".hci.test.KitchenSink"
      oneof_index: 0
    }
    field {
      name: "hue"
      number: 35
      label: LABEL_OPTIONAL
      type: TYPE_ENUM
      type_name: ".hci.test.Color"
      oneof_index: 0
    }
    field {
      name: "opt"
      number: 36
      label: LABEL_OPTIONAL
      type: TYPE_INT32
      oneof_index: 1
      proto3_optional: true
    }
    field {
      name: "items"
      number: 37
      label: LABEL_REPEATED
      type: TYPE_MESSAGE
      type_name: ".hci.test.KitchenSink"
    }
    field { name: "size_bytes" number: 38 label: LABEL_OPTIONAL type: TYPE_UINT64 }
    field { name: "delta_mib" number: 39 label: LABEL_OPTIONAL type: TYPE_INT64 }
    field { name: "small_bytes" number: 40 label: LABEL_OPTIONAL type: TYPE_INT32 }
    field {
      name: "values"
      number: 41
      label: LABEL_REPEATED
      type: TYPE_MESSAGE
      type_name: ".google.protobuf.Value"
    }
    field {
      name: "value_map"
      number: 42
      label: LABEL_REPEATED
      type: TYPE_MESSAGE
      type_name: ".hci.test.KitchenSink.ValueMapEntry"
    }
    field {
      name: "color_map"
      number: 43
      label: LABEL_REPEATED
      type: TYPE_MESSAGE
      type_name: ".hci.test.KitchenSink.ColorMapEntry"
    }
    field {
      name: "maybe_double"
      number: 44
      label: LABEL_OPTIONAL
      type: TYPE_MESSAGE
      type_name: ".google.protobuf.DoubleValue"
    }
    field {
      name: "maybe_blob"
      number: 45
      label: LABEL_OPTIONAL
      type: TYPE_MESSAGE
      type_name: ".google.protobuf.BytesValue"
    }
    field { name: "floats" number: 46 label: LABEL_REPEATED type: TYPE_FLOAT }
    field { name: "flags" number: 47 label: LABEL_REPEATED type: TYPE_BOOL }
    field {
      name: "u64_map"
      number: 48
      label: LABEL_REPEATED
      type: TYPE_MESSAGE
      type_name: ".hci.test.KitchenSink.U64MapEntry"
    }
    nested_type {
      name: "ByIdEntry"
      field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_INT32 }
      field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
      options { map_entry: true }
    }
    nested_type {
      name: "ByFlagEntry"
      field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_BOOL }
      field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_INT64 }
      options { map_entry: true }
    }
    nested_type {
      name: "ChildrenEntry"
      field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
      field {
        name: "value"
        number: 2
        label: LABEL_OPTIONAL
        type: TYPE_MESSAGE
        type_name: ".hci.test.KitchenSink"
      }
      options { map_entry: true }
    }
    nested_type {
      name: "ValueMapEntry"
      field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
      field {
        name: "value"
        number: 2
        label: LABEL_OPTIONAL
        type: TYPE_MESSAGE
        type_name: ".google.protobuf.Value"
      }
      options { map_entry: true }
    }
    nested_type {
      name: "ColorMapEntry"
      field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
      field {
        name: "value"
        number: 2
        label: LABEL_OPTIONAL
        type: TYPE_ENUM
        type_name: ".hci.test.Color"
      }
      options { map_entry: true }
    }
    nested_type {
      name: "U64MapEntry"
      field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_UINT64 }
      field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_DOUBLE }
      options { map_entry: true }
    }
    oneof_decl { name: "choice" }
    oneof_decl { name: "_opt" }
  }
)pb";

/// The prototype of hci.test.KitchenSink (a DynamicMessage; well-known types inside it are the
/// generated classes). Aborts if the schema above does not build.
inline const google::protobuf::Message& KitchenSinkPrototype() {
  struct Schema {
    google::protobuf::DescriptorPool pool{google::protobuf::DescriptorPool::generated_pool()};
    google::protobuf::DynamicMessageFactory factory{&pool};
    const google::protobuf::Message* prototype = nullptr;
  };
  // Never destroyed: messages made from it may outlive static destruction order.
  static const Schema* const schema = [] {
    google::protobuf::FileDescriptorProto file;
    if (!google::protobuf::TextFormat::ParseFromString(kKitchenSinkProto, &file)) {
      std::cerr << "kitchen sink schema: bad text format\n";
      std::abort();
    }
    auto* s = new Schema;
    const google::protobuf::FileDescriptor* fd = s->pool.BuildFile(file);
    if (fd == nullptr) {
      std::cerr << "kitchen sink schema: does not build\n";
      std::abort();
    }
    s->factory.SetDelegateToGeneratedFactory(true);
    s->prototype = s->factory.GetPrototype(fd->FindMessageTypeByName("KitchenSink"));
    return s;
  }();
  return *schema->prototype;
}

}  // namespace hci::testing
