#include "runtime/data/chat_template.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string_view>

#include "runtime/data/byte_tokenizer.h"

namespace dstrain::runtime {
namespace {

// Python's str.isspace(): Jinja's `trim` filter (Llama 3's template) is str.strip().
bool is_python_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

// Length of the UTF-8 sequence led by byte `b` (input is validated UTF-8).
size_t utf8_length(unsigned char b) {
  if (b < 0x80) return 1;
  if (b < 0xe0) return 2;
  if (b < 0xf0) return 3;
  return 4;
}

uint32_t decode_at(std::string_view s, size_t at, size_t n) {
  static constexpr unsigned char kLeadMask[5] = {0, 0x7f, 0x1f, 0x0f, 0x07};
  uint32_t c = static_cast<unsigned char>(s[at]) & kLeadMask[n];
  for (size_t i = 1; i < n; ++i) c = (c << 6) | (static_cast<unsigned char>(s[at + i]) & 0x3f);
  return c;
}

std::string python_strip(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    size_t n = utf8_length(static_cast<unsigned char>(s[begin]));
    if (begin + n > s.size() || !is_python_space(decode_at(s, begin, n))) break;
    begin += n;
  }
  size_t end = s.size();
  while (end > begin) {
    size_t lead = end - 1;
    while (lead > begin && (static_cast<unsigned char>(s[lead]) & 0xc0) == 0x80) --lead;
    if (!is_python_space(decode_at(s, lead, end - lead))) break;
    end = lead;
  }
  return std::string(s.substr(begin, end - begin));
}

const char* role_name(ChatRole role) {
  switch (role) {
    case ChatRole::kSystem:
      return "system";
    case ChatRole::kUser:
      return "user";
    case ChatRole::kAssistant:
      return "assistant";
  }
  return "user";
}

base::Status bad_line(const std::string& file, int64_t line, const std::string& what) {
  return base::Status::BadInput(file + ":" + std::to_string(line) + ": " + what);
}

base::StatusOr<std::string> string_field(const nlohmann::json& object, const char* key,
                                         const std::string& where_prefix, const std::string& file,
                                         int64_t line) {
  auto it = object.find(key);
  if (it == object.end()) {
    return bad_line(file, line, where_prefix + "field \"" + key + "\" is missing");
  }
  if (!it->is_string()) {
    return bad_line(
        file, line,
        where_prefix + "field \"" + key + "\" is " + it->type_name() + ", expected a string");
  }
  return it->get<std::string>();
}

base::StatusOr<std::vector<ChatMessage>> parse_messages(const nlohmann::json& list,
                                                        const std::string& file, int64_t line) {
  if (!list.is_array()) {
    return bad_line(
        file, line,
        std::string("field \"messages\" is ") + list.type_name() + ", expected an array");
  }
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = "messages[" + std::to_string(i) + "]: ";
    if (!list[i].is_object()) {
      return bad_line(file, line, where + "expected an object, got " + list[i].type_name());
    }
    ASSIGN_OR_RETURN(std::string role, string_field(list[i], "role", where, file, line));
    ASSIGN_OR_RETURN(std::string content, string_field(list[i], "content", where, file, line));
    ChatMessage m;
    if (role == "system") {
      m.role = ChatRole::kSystem;
    } else if (role == "user") {
      m.role = ChatRole::kUser;
    } else if (role == "assistant") {
      m.role = ChatRole::kAssistant;
    } else {
      return bad_line(
          file, line,
          where + "role \"" + role + "\" is not one of \"system\", \"user\", \"assistant\"");
    }
    m.content = std::move(content);
    out.push_back(std::move(m));
  }
  return out;
}

// Appends to `out`, merging with the last segment when both flags agree (plain text only:
// a special segment must stay exactly one token).
void add(std::vector<ChatSegment>& out, std::string text, bool special, bool trainable) {
  if (text.empty()) return;
  if (!special && !out.empty() && !out.back().special && out.back().trainable == trainable) {
    out.back().text += text;
    return;
  }
  out.push_back({std::move(text), special, trainable});
}

void render_llama3(const std::vector<ChatMessage>& messages, std::vector<ChatSegment>& out) {
  add(out, "<|begin_of_text|>", true, false);
  for (const ChatMessage& m : messages) {
    const bool assistant = m.role == ChatRole::kAssistant;
    add(out, "<|start_header_id|>", true, false);
    add(out, role_name(m.role), false, false);
    add(out, "<|end_header_id|>", true, false);
    add(out, "\n\n", false, false);
    add(out, python_strip(m.content), false, assistant);
    add(out, "<|eot_id|>", true, assistant);
  }
}

void render_chatml(const std::vector<ChatMessage>& messages, std::vector<ChatSegment>& out) {
  if (messages.front().role != ChatRole::kSystem) {
    add(out, "<|im_start|>", true, false);
    add(out, "system\nYou are a helpful assistant.", false, false);
    add(out, "<|im_end|>", true, false);
    add(out, "\n", false, false);
  }
  for (const ChatMessage& m : messages) {
    const bool assistant = m.role == ChatRole::kAssistant;
    add(out, "<|im_start|>", true, false);
    add(out, std::string(role_name(m.role)) + "\n", false, false);
    add(out, m.content, false, assistant);
    add(out, "<|im_end|>", true, assistant);
    add(out, "\n", false, false);
  }
}

void render_deepseek(const std::vector<ChatMessage>& messages, std::vector<ChatSegment>& out) {
  add(out,
      "<\xef\xbd\x9c"
      "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
      true, false);
  for (const ChatMessage& m : messages) {
    switch (m.role) {
      case ChatRole::kSystem:
        add(out, m.content + "\n\n", false, false);
        break;
      case ChatRole::kUser:
        add(out, "User: " + m.content + "\n\n", false, false);
        break;
      case ChatRole::kAssistant:
        add(out, "Assistant: ", false, false);
        add(out, m.content, false, true);
        add(out,
            "<\xef\xbd\x9c"
            "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
            true, true);
        break;
    }
  }
}

// Tokens of `whole` that `prefix` already produces: the longest common prefix of the two.
size_t common_prefix(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

// Encodes one run of plain segments [first, last) as a whole; each segment owns the tokens
// that encoding its text on top of the earlier ones adds.
void encode_run(const std::vector<ChatSegment>& segments, size_t first, size_t last,
                const Tokenizer& tokenizer, ChatTokens& out) {
  std::string whole;
  for (size_t i = first; i < last; ++i) whole += segments[i].text;
  std::vector<uint32_t> ids;
  tokenizer.encode(whole, ids);
  std::vector<uint8_t> mask(ids.size(), segments[last - 1].trainable ? 1 : 0);
  std::string prefix;
  size_t owned = 0;  // tokens assigned to earlier segments
  std::vector<uint32_t> prefix_ids;
  for (size_t i = first; i + 1 < last; ++i) {
    prefix += segments[i].text;
    prefix_ids.clear();
    tokenizer.encode(prefix, prefix_ids);
    // A token crossing into the next segment is not part of the common prefix, so it goes
    // with the later segment; only a trainable later segment makes that matter.
    size_t end = std::max(owned, common_prefix(prefix_ids, ids));
    std::fill(mask.begin() + static_cast<std::ptrdiff_t>(owned),
              mask.begin() + static_cast<std::ptrdiff_t>(end), segments[i].trainable ? 1 : 0);
    owned = end;
  }
  out.ids.insert(out.ids.end(), ids.begin(), ids.end());
  out.mask.insert(out.mask.end(), mask.begin(), mask.end());
}

}  // namespace

base::StatusOr<ChatFormat> parse_chat_format(const std::string& text) {
  if (text == "llama3") return ChatFormat::kLlama3;
  if (text == "chatml") return ChatFormat::kChatml;
  if (text == "deepseek") return ChatFormat::kDeepseek;
  return base::Status::InvalidArgument("--chat-template: \"" + text +
                                       "\" is not one of llama3, chatml, deepseek");
}

base::StatusOr<std::vector<ChatMessage>> parse_chat_record(const std::string& line,
                                                           const std::string& file,
                                                           int64_t line_no) {
  int64_t bad_utf8 = first_invalid_utf8(line);
  if (bad_utf8 >= 0) {
    return bad_line(file, line_no,
                    "invalid UTF-8 at byte " + std::to_string(bad_utf8 + 1) + " of the line");
  }
  nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (record.is_discarded()) return bad_line(file, line_no, "not valid JSON");
  if (!record.is_object()) {
    return bad_line(file, line_no,
                    "expected a JSON object with \"messages\" or \"prompt\" and \"completion\", "
                    "got " +
                        std::string(record.type_name()));
  }
  std::vector<ChatMessage> messages;
  auto list = record.find("messages");
  if (list != record.end()) {
    ASSIGN_OR_RETURN(messages, parse_messages(*list, file, line_no));
  } else {
    ASSIGN_OR_RETURN(std::string prompt, string_field(record, "prompt", "", file, line_no));
    ASSIGN_OR_RETURN(std::string completion, string_field(record, "completion", "", file, line_no));
    messages.push_back({ChatRole::kUser, std::move(prompt)});
    messages.push_back({ChatRole::kAssistant, std::move(completion)});
  }
  bool any_assistant = std::any_of(messages.begin(), messages.end(), [](const ChatMessage& m) {
    return m.role == ChatRole::kAssistant;
  });
  if (!any_assistant) {
    return bad_line(file, line_no, "no \"assistant\" message: nothing to train on");
  }
  return messages;
}

std::vector<ChatSegment> render_chat(ChatFormat format, const std::vector<ChatMessage>& messages) {
  std::vector<ChatSegment> out;
  if (messages.empty()) return out;
  switch (format) {
    case ChatFormat::kLlama3:
      render_llama3(messages, out);
      break;
    case ChatFormat::kChatml:
      render_chatml(messages, out);
      break;
    case ChatFormat::kDeepseek:
      render_deepseek(messages, out);
      break;
  }
  return out;
}

std::string rendered_text(const std::vector<ChatSegment>& segments) {
  std::string text;
  for (const ChatSegment& s : segments) text += s.text;
  return text;
}

base::StatusOr<ChatTokens> tokenize_chat(const std::vector<ChatSegment>& segments,
                                         const Tokenizer& tokenizer) {
  ChatTokens out;
  size_t i = 0;
  while (i < segments.size()) {
    if (segments[i].special) {
      std::optional<uint32_t> id = tokenizer.token_id(segments[i].text);
      if (!id) {
        return base::Status::BadInput("the tokenizer has no token \"" + segments[i].text +
                                      "\", which this chat template needs");
      }
      out.ids.push_back(*id);
      out.mask.push_back(segments[i].trainable ? 1 : 0);
      ++i;
      continue;
    }
    size_t last = i;
    while (last < segments.size() && !segments[last].special) ++last;
    encode_run(segments, i, last, tokenizer, out);
    i = last;
  }
  return out;
}

}  // namespace dstrain::runtime
