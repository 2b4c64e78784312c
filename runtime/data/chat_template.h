#pragma once
// Chat data: a JSONL record (a "messages" list, or "prompt"/"completion") rendered the way a
// model's own chat template renders it (transformers' apply_chat_template with
// add_generation_prompt false), as text segments flagged special and trainable, then token ids
// with a loss mask. Torch-free.
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/data/tokenizer/tokenizer.h"

namespace dstrain::runtime {

// llama3: Meta Llama 3 Instruct; chatml: Qwen2 Instruct (ChatML with Qwen's default system
// prompt); deepseek: DeepSeek LLM chat ("User: ...\n\nAssistant: ...<eos>").
enum class ChatFormat { kLlama3, kChatml, kDeepseek };

// kInvalidArgument naming --chat-template for anything but "llama3", "chatml", "deepseek".
base::StatusOr<ChatFormat> parse_chat_format(const std::string& text);

enum class ChatRole { kSystem, kUser, kAssistant };

struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  std::string content;
};

// One piece of the rendered conversation. A special segment is exactly one special token's text
// ("<|eot_id|>") and becomes that token's id; other text is encoded as plain text.
struct ChatSegment {
  std::string text;
  bool special = false;
  bool trainable = false;  // loss on its tokens: assistant content and its end-of-turn token
};

// Parses one JSONL line: {"messages": [{"role": "system"|"user"|"assistant", "content": "..."},
// ...]} or {"prompt": "...", "completion": "..."} (a user turn and an assistant turn). Other
// fields are ignored. Errors are kBadInput "file:line: problem": invalid UTF-8 or JSON, not an
// object, a missing or mistyped field, an unknown role, no assistant message.
base::StatusOr<std::vector<ChatMessage>> parse_chat_record(const std::string& line,
                                                           const std::string& file,
                                                           int64_t line_no);

// The conversation as the format's template renders it, split into segments. Adjacent segments
// may share a flag; concatenating their texts gives the template's output.
std::vector<ChatSegment> render_chat(ChatFormat format, const std::vector<ChatMessage>& messages);

// The texts of `segments`, concatenated.
std::string rendered_text(const std::vector<ChatSegment>& segments);

// Token ids and a 0/1 loss-mask byte per id. Each run of plain text between special tokens is
// encoded as a whole, as Hugging Face tokenizes the rendered string, so token boundaries match;
// a token that straddles a trainable and a non-trainable segment counts as trainable.
struct ChatTokens {
  std::vector<uint32_t> ids;
  std::vector<uint8_t> mask;
};

// kBadInput when the tokenizer lacks one of the format's special tokens.
base::StatusOr<ChatTokens> tokenize_chat(const std::vector<ChatSegment>& segments,
                                         const Tokenizer& tokenizer);

}  // namespace dstrain::runtime
