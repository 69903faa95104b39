// The pickle interpreter on pickles written by Python (protocols 2 to 5, Python 2's
// cPickle) and on broken input.

#include <gtest/gtest.h>

#include "admis/host/pickle.h"
#include "weights_fixtures.h"

namespace {

using admis::host::pickle::Hooks;
using admis::host::pickle::Type;
using admis::host::pickle::unpickle;
using admis::host::pickle::Value;
using admis::host::pickle::ValuePtr;
using admis::weights_test::error_of;
using admis::weights_test::fixture;
using admis::weights_test::read_file_bytes;

ValuePtr unpickle_file(const std::string& path, const Hooks& hooks = {}) {
  const std::string bytes = read_file_bytes(path);
  return unpickle(bytes.data(), bytes.size(), hooks, path);
}

// A string literal with embedded NULs, without its terminator.
template <std::size_t N>
std::string bytes_of(const char (&literal)[N]) {
  return std::string(literal, N - 1);
}

ValuePtr unpickle_bytes(const std::string& bytes, const Hooks& hooks = {}) {
  return unpickle(bytes.data(), bytes.size(), hooks, "test.pkl");
}

class PickleProtocol : public ::testing::TestWithParam<int> {};

// values_pN.pkl: one dict of every value kind, see make_fixtures.py make_pickles().
TEST_P(PickleProtocol, ReadsEveryValueKindPythonWrites) {
  const auto root = unpickle_file(fixture("values_p" + std::to_string(GetParam()) + ".pkl"));
  ASSERT_TRUE(root->is(Type::Dict)) << root->describe();

  EXPECT_EQ(root->find("int1")->as_int(), 7);
  EXPECT_EQ(root->find("int2")->as_int(), 300);
  EXPECT_EQ(root->find("int4")->as_int(), -70000);
  EXPECT_EQ(root->find("long")->as_int(), std::int64_t{1} << 40);
  EXPECT_EQ(root->find("neg_long")->as_int(), -(std::int64_t{1} << 40));
  // 2**70 is kept as its little-endian bytes: 0x40 in byte 8.
  const auto huge = root->find("huge");
  ASSERT_TRUE(huge->is(Type::BigInt)) << huge->describe();
  ASSERT_EQ(huge->text.size(), 9u);
  EXPECT_EQ(static_cast<unsigned char>(huge->text[8]), 0x40);
  EXPECT_EQ(huge->text.substr(0, 8), std::string(8, '\0'));

  EXPECT_DOUBLE_EQ(root->find("float")->as_float(), -1.25);
  EXPECT_EQ(root->find("text")->as_text(), "h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c");
  EXPECT_TRUE(root->find("text")->is(Type::String));

  // bytes: BINBYTES at protocol 3+, _codecs.encode(str, 'latin1') at protocol 2.
  const auto raw = root->find("raw");
  ASSERT_TRUE(raw->is(Type::Bytes)) << raw->describe();
  ASSERT_EQ(raw->text.size(), 256u);
  for (int i = 0; i < 256; ++i) ASSERT_EQ(static_cast<unsigned char>(raw->text[i]), i);
  EXPECT_EQ(root->find("long_raw")->as_text(), std::string(300, 'y'));
  EXPECT_EQ(root->find("long_text")->as_text(), std::string(300, 'x'));

  EXPECT_TRUE(root->find("none")->is(Type::None));
  EXPECT_TRUE(root->find("yes")->as_bool());
  EXPECT_FALSE(root->find("no")->as_bool());

  EXPECT_TRUE(root->find("tuple0")->is(Type::Tuple));
  EXPECT_EQ(root->find("tuple0")->items.size(), 0u);
  EXPECT_EQ(root->find("tuple1")->as_int_sequence(), std::vector<std::int64_t>({1}));
  EXPECT_EQ(root->find("tuple2")->items.at(1)->as_text(), "a");
  EXPECT_EQ(root->find("tuple3")->as_int_sequence(), std::vector<std::int64_t>({1, 2, 3}));
  EXPECT_EQ(root->find("tuple5")->as_int_sequence(), std::vector<std::int64_t>({1, 2, 3, 4, 5}));

  const auto list = root->find("list");
  ASSERT_TRUE(list->is(Type::List));
  ASSERT_EQ(list->items.size(), 3u);
  EXPECT_EQ(list->items[1]->as_int_sequence(), std::vector<std::int64_t>({2, 3}));
  EXPECT_EQ(list->items[2]->find("k")->as_text(), "v");

  // One list referenced twice through the memo is one shared value.
  EXPECT_EQ(root->find("shared_a").get(), root->find("shared_b").get());
  EXPECT_EQ(root->find("shared_a")->as_int_sequence(), std::vector<std::int64_t>({1, 2}));

  // OrderedDict keeps insertion order.
  const auto ordered = root->find("ordered");
  ASSERT_TRUE(ordered->is(Type::Dict));
  ASSERT_EQ(ordered->entries.size(), 2u);
  EXPECT_EQ(ordered->entries[0].first->as_text(), "z");
  EXPECT_EQ(ordered->entries[1].first->as_text(), "a");

  EXPECT_TRUE(root->find("set")->is(Type::Set));
  EXPECT_EQ(root->find("set")->items.at(0)->as_int(), 3);
  EXPECT_TRUE(root->find("frozen")->is(Type::Set));
  EXPECT_EQ(root->find("frozen")->items.at(0)->as_int(), 4);

  // An unknown class stays a generic object carrying its state.
  const auto ns = root->find("namespace");
  ASSERT_TRUE(ns->is(Type::Object)) << ns->describe();
  EXPECT_EQ(ns->qualified_name(), "argparse.Namespace");
  ASSERT_TRUE(ns->state);
  EXPECT_DOUBLE_EQ(ns->state->find("lr")->as_float(), 0.5);

  const auto int_keys = root->find("int_keys");
  ASSERT_EQ(int_keys->entries.size(), 2u);
  EXPECT_EQ(int_keys->entries[0].first->as_int(), 1);
  EXPECT_EQ(int_keys->entries[0].second->as_text(), "one");
}

INSTANTIATE_TEST_SUITE_P(Protocols, PickleProtocol, ::testing::Values(2, 3, 4, 5));

// insightface verification .bin: (list of encoded images, list of bools), written by
// Python 2's cPickle (BINSTRING) and Python 3 protocol 4 (FRAME, BINBYTES, MEMOIZE).
TEST(Pickle, ReadsInsightfaceBinFromPython2AndPython3) {
  const auto expected = admis::host::read_safetensors(admis::test::parity_file("formats_expected.safetensors"));
  const torch::Tensor issame = expected.at("bin_issame");
  for (const char* name : {"tiny_py2.bin", "tiny_py3.bin"}) {
    SCOPED_TRACE(name);
    const auto root = unpickle_file(admis::test::parity_file(name));
    ASSERT_TRUE(root->is(Type::Tuple)) << root->describe();
    ASSERT_EQ(root->items.size(), 2u);
    const auto& images = root->items[0]->as_sequence();
    const auto& flags = root->items[1]->as_sequence();
    ASSERT_EQ(images.size(), 8u);
    ASSERT_EQ(static_cast<std::int64_t>(flags.size()), issame.numel());
    for (const auto& image : images) {
      ASSERT_TRUE(image->is(Type::Bytes)) << image->describe();
      // Encoded JPEG: starts with the SOI marker FF D8.
      ASSERT_GE(image->text.size(), 2u);
      EXPECT_EQ(static_cast<unsigned char>(image->text[0]), 0xff);
      EXPECT_EQ(static_cast<unsigned char>(image->text[1]), 0xd8);
    }
    for (std::size_t i = 0; i < flags.size(); ++i) {
      EXPECT_EQ(flags[i]->as_bool(), issame[static_cast<std::int64_t>(i)].item<bool>()) << "pair " << i;
    }
  }
  // Both files hold the same images.
  const auto py2 = unpickle_file(admis::test::parity_file("tiny_py2.bin"));
  const auto py3 = unpickle_file(admis::test::parity_file("tiny_py3.bin"));
  for (std::size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(py2->items[0]->items[i]->text, py3->items[0]->items[i]->text) << "image " << i;
  }
}

TEST(Pickle, HooksResolvePersistentIdsAndCalls) {
  // Protocol 2: PROTO 2, MARK, 'id' (BINUNICODE), TUPLE, BINPERSID, then
  // GLOBAL 'mod fn', MARK, BININT1 5, TUPLE, REDUCE, TUPLE2, STOP.
  const std::string program = bytes_of("\x80\x02(X\x02\x00\x00\x00idtQcmod\nfn\n(K\x05tR\x86.");
  Hooks hooks;
  hooks.persistent_load = [](const ValuePtr& pid) {
    return Value::string_value("resolved " + pid->items.at(0)->as_text());
  };
  hooks.call = [](const Value& callable, const ValuePtr& args) -> ValuePtr {
    if (callable.qualified_name() != "mod.fn") return nullptr;
    return Value::int_value(args->items.at(0)->as_int() * 10);
  };
  const auto root = unpickle_bytes(program, hooks);
  ASSERT_TRUE(root->is(Type::Tuple));
  EXPECT_EQ(root->items[0]->as_text(), "resolved id");
  EXPECT_EQ(root->items[1]->as_int(), 50);

  // Without hooks: persistent ids are an error, calls become generic objects.
  EXPECT_NE(error_of([&] { unpickle_bytes(program); }).find("persistent id"), std::string::npos);
  const std::string call_only = bytes_of("\x80\x02\x63mod\nfn\n(K\x05tR.");
  const auto object = unpickle_bytes(call_only);
  ASSERT_TRUE(object->is(Type::Object));
  EXPECT_EQ(object->qualified_name(), "mod.fn");
  EXPECT_EQ(object->args->items.at(0)->as_int(), 5);
}

TEST(Pickle, BrokenInputIsAnErrorWithTheOffset) {
  const std::string valid = read_file_bytes(fixture("values_p4.pkl"));
  // Cut short: the program never reaches STOP.
  const std::string truncated = error_of([&] { unpickle_bytes(valid.substr(0, valid.size() / 2)); });
  EXPECT_NE(truncated.find("test.pkl: pickle: data ends early"), std::string::npos) << truncated;
  EXPECT_NE(truncated.find("at byte"), std::string::npos) << truncated;

  const std::string unknown = error_of([&] { unpickle_bytes(bytes_of("\x80\x02\xff")); });
  EXPECT_NE(unknown.find("unsupported pickle opcode 0xff at byte 2"), std::string::npos) << unknown;

  const std::string underflow = error_of([&] { unpickle_bytes(bytes_of("\x80\x02\x86.")); });
  EXPECT_NE(underflow.find("stack underflow"), std::string::npos) << underflow;

  const std::string memo = error_of([&] { unpickle_bytes(bytes_of("\x80\x02h\x07.")); });
  EXPECT_NE(memo.find("memo index 7 was never stored"), std::string::npos) << memo;

  const std::string leftover = error_of([&] { unpickle_bytes(bytes_of("\x80\x02K\x01K\x02.")); });
  EXPECT_NE(leftover.find("STOP with 2 values"), std::string::npos) << leftover;

  EXPECT_NE(error_of([&] { unpickle_bytes(""); }).find("data ends early"), std::string::npos);
}

}  // namespace
