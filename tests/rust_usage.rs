//! Usage extraction over the recorded corpus (`tests/data/corpus`).
//!
//! Every file is turned back into the bytes a client would receive, as the
//! corpus MANIFEST ("How to rebuild wire-faithful SSE bytes") describes:
//!
//! * Chat Completions / legacy Completions (and compatible servers):
//!   `data: <line>\n\n` per line, then `data: [DONE]\n\n`.
//! * Responses-style, Anthropic and Cohere: `event: <type>\ndata: <line>\n\n`
//!   (Responses also with a final `data: [DONE]\n\n`, which the Open
//!   Responses spec requires and OpenAI does not send).
//! * Gemini and Gemini Interactions: `data: <line>\n\n`.
//! * `.bin`, `.sse` and `anthropic/basic_response.txt` are raw SSE already.
//!
//! Each stream is also checked with CRLF line endings and with `: keep-alive`
//! comments, fed whole, byte by byte (small files) and in pseudo-random
//! chunks. The expected values below were read from the files by hand (and
//! cross-checked with a JSON parser); they are not produced by the code
//! under test.

use std::path::PathBuf;

use ssetally::{Api, ApiHint, DecoderConfig, Report, Status, UsageTap};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// `data: <line>\n\n`, then `data: [DONE]\n\n`.
    DataDone,
    /// `data: <line>\n\n`.
    Data,
    /// `event: <type>\ndata: <line>\n\n`.
    Typed,
    /// `event: <type>\ndata: <line>\n\n`; the Responses variants with and
    /// without a final `[DONE]` are both checked.
    TypedResponses,
    /// The file is raw SSE.
    Raw,
}

/// The six normalised counts: input, output, total, cached input, cache
/// write, reasoning.
type Six = [Option<u64>; 6];

#[derive(Clone, Debug)]
struct Want {
    api: Api,
    status: Status,
    id: Option<&'static str>,
    model: Option<&'static str>,
    usage: Option<Six>,
    finish_reason: Option<&'static str>,
    events: u64,
    deltas: u64,
    done: bool,
}

#[allow(clippy::too_many_arguments)]
fn want(
    api: Api,
    status: Status,
    id: &'static str,
    model: &'static str,
    usage: Option<Six>,
    finish_reason: Option<&'static str>,
    events: u64,
    deltas: u64,
    done: bool,
) -> Want {
    Want {
        api,
        status,
        id: (!id.is_empty()).then_some(id),
        model: (!model.is_empty()).then_some(model),
        usage,
        finish_reason,
        events,
        deltas,
        done,
    }
}

fn u(
    input: u64,
    output: u64,
    total: u64,
    cached: Option<u64>,
    write: Option<u64>,
    reasoning: Option<u64>,
) -> Option<Six> {
    Some([
        Some(input),
        Some(output),
        Some(total),
        cached,
        write,
        reasoning,
    ])
}

const N: Option<u64> = None;

fn z(n: u64) -> Option<u64> {
    Some(n)
}

use Api::{AnthropicMessages as Anth, ChatCompletions as Chat, Responses as Resp};
use Status::{Completed as Done, Incomplete, Truncated};

fn resp(
    id: &'static str,
    model: &'static str,
    usage: Option<Six>,
    events: u64,
    deltas: u64,
) -> Want {
    want(Resp, Done, id, model, usage, None, events, deltas, true)
}

fn chat(
    id: &'static str,
    model: &'static str,
    usage: Option<Six>,
    fr: &'static str,
    events: u64,
    deltas: u64,
) -> Want {
    let status = if fr == "length" { Incomplete } else { Done };
    want(
        Chat,
        status,
        id,
        model,
        usage,
        Some(fr),
        events,
        deltas,
        true,
    )
}

fn anth(
    id: &'static str,
    model: &'static str,
    usage: Option<Six>,
    fr: &'static str,
    events: u64,
    deltas: u64,
) -> Want {
    want(Anth, Done, id, model, usage, Some(fr), events, deltas, true)
}

/// Every corpus file with what its stream must report.
#[rustfmt::skip]
fn cases() -> Vec<(&'static str, Wire, Vec<Want>)> {
    use Wire::*;
    vec![
        ("alibaba/alibaba-text.chunks.txt", DataDone, vec![chat(
            "chatcmpl-d2d6aab7-cbca-970f-8aa6-7d58c9724733", "qwen3-max",
            u(18, 779, 797, z(0), N, N), "stop", 175, 171)]),
        ("alibaba/alibaba-tool-call.chunks.txt", DataDone, vec![chat(
            "chatcmpl-8e243c57-23b3-9db2-a02e-e3c53929c368", "qwen3-max",
            u(295, 22, 317, z(0), N, N), "tool_calls", 7, 2)]),
        // cache_creation 3337 + cache_read 6289 + input 6 from message_delta.
        ("anthropic/anthropic-code-execution-20260120-prompt-cache.1.chunks.txt", Typed, vec![anth(
            "msg_011CdYfpjpVtBoXyXCQD1tQP", "claude-sonnet-5",
            u(9632, 198, 9830, z(6289), z(3337), z(0)), "end_turn", 44, 28)]),
        ("anthropic/anthropic-compaction.1.chunks.txt", Typed, vec![anth(
            "msg_01WJn2D9FrjipEZ9u51siJHC", "claude-opus-4-6",
            u(612, 2819, 3431, z(0), z(0), N), "end_turn", 749, 739)]),
        ("anthropic/anthropic-fallback.chunks.txt", Typed, vec![anth(
            "msg_01FallbackStreamAbcdefghij", "claude-fable-5",
            u(412, 264, 676, z(0), z(0), N), "end_turn", 9, 2)]),
        // The delta's input_tokens (61) wins over message_start's (43).
        ("anthropic/anthropic-message-delta-input-tokens.chunks.txt", Typed, vec![anth(
            "msg_3196a1cc08de4d76b85b8f5777c0d42b", "claude-opus-4-5-20251101",
            u(61, 2, 63, N, N, N), "end_turn", 8, 2)]),
        ("anthropic/anthropic-refusal.chunks.txt", Typed, vec![want(
            Anth, Incomplete, "msg_01RefusalStreamAbcdefghijk", "claude-fable-5",
            u(18, 5, 23, z(0), z(0), N), Some("refusal"), 4, 0, true)]),
        ("anthropic/anthropic-text.chunks.txt", Typed, vec![anth(
            "msg_01QC4g3HwBThD4BaNtBckFDJ", "claude-sonnet-4-5-20250929",
            u(12, 30, 42, z(0), z(0), N), "end_turn", 12, 6)]),
        ("anthropic/anthropic-tool-no-args.chunks.txt", Typed, vec![anth(
            "msg_01GE2RKp1VYsPzdFs3sS9z5S", "claude-sonnet-4-5-20250929",
            u(565, 48, 613, z(0), z(0), N), "tool_use", 13, 2)]),
        ("anthropic/anthropic-web-search-tool.1.chunks.txt", Typed, vec![anth(
            "msg_01LHpEgU4KbfgXGVi3UtHQY1", "claude-sonnet-4-20250514",
            u(15665, 795, 16460, z(0), z(0), N), "end_turn", 120, 60)]),
        // No blank line after `message_stop`: that event is never dispatched.
        ("anthropic/basic_response.txt", Raw, vec![want(
            Anth, Done, "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK", "claude-3-opus-latest",
            u(11, 6, 17, N, N, N), Some("end_turn"), 9, 3, true)]),
        // The second message_start repeats the id: ignored, not counted twice.
        ("anthropic/duplicate-message-start.chunks.txt", Typed, vec![anth(
            "msg_dup", "claude-3-haiku-20240307", u(17, 227, 244, N, N, N), "end_turn", 7, 1)]),
        ("anthropic/spliced-message-start.chunks.txt", Typed, vec![
            want(Anth, Truncated, "msg_first", "claude-3-haiku-20240307",
                u(17, 1, 18, N, N, N), None, 7, 2, false),
            anth("msg_second", "claude-3-haiku-20240307", u(17, 65, 82, N, N, N), "tool_use", 10, 2),
        ]),
        // Top-level reasoning_tokens, prompt_tokens_details null.
        ("azure/azure-deepseek-reasoning.1.chunks.txt", DataDone, vec![chat(
            "7334c29da064437e9d158710cdefbae6", "deepseek-v4-pro",
            u(19, 1720, 1739, N, N, z(0)), "stop", 786, 782)]),
        // The leading prompt_filter_results chunk has an empty id and model.
        ("azure/azure-model-router.1.chunks.txt", DataDone, vec![chat(
            "chatcmpl-CYPS1lijGoK8gd9lYzY3r9Sx50nbt", "gpt-5-nano-2025-08-07",
            u(15, 78, 93, z(0), N, z(64)), "stop", 9, 4)]),
        ("azure/azure-text.1.chunks.txt", TypedResponses, vec![resp(
            "resp_02ce8deeb6197db200698c5196e9588197a572bbea62d38cd1", "gpt-5.1",
            u(11, 11, 22, z(0), N, z(0)), 9, 1)]),
        ("azure/azure-tool-call.1.chunks.txt", TypedResponses, vec![resp(
            "resp_04041325ab8ae30400698c519fb7fc81979972618138fc336d", "gpt-5.1",
            u(45, 24, 69, z(0), N, z(0)), 12, 6)]),
        // Two streams; the first one has no [DONE] of its own.
        ("cerebras/cererebras-structured-output-tools.1.chunks.txt", DataDone, vec![
            want(Chat, Done, "chatcmpl-9e97f9ca-9626-4ef8-8543-6e3ee7cef659", "zai-glm-4.7",
                u(322, 104, 426, z(256), N, z(97)), Some("tool_calls"), 35, 33, false),
            chat("chatcmpl-f4bd7eab-cdbc-418d-896a-ea0b8d5e44ce", "zai-glm-4.7",
                u(433, 122, 555, z(256), N, z(108)), "tool_calls", 63, 59),
        ]),
        // Billed units, not the raw token counts (507 / 10).
        ("cohere/cohere-text.chunks.txt", Typed, vec![want(
            Api::Cohere, Done, "321d178c-2c12-44d3-ae42-2f5510f6b1cc", "",
            u(12, 7, 19, N, N, N), Some("COMPLETE"), 11, 7, true)]),
        ("deepseek/deepseek-reasoning.chunks.txt", DataDone, vec![chat(
            "cac7192e-e619-40c6-96b0-ed4276bc03ac", "deepseek-reasoner",
            u(18, 219, 237, z(0), N, z(205)), "stop", 221, 218)]),
        ("deepseek/deepseek-text.chunks.txt", DataDone, vec![chat(
            "f6117a0b-129d-46fa-b239-78f01c2c5df9", "deepseek-chat",
            u(13, 400, 413, z(0), N, N), "length", 403, 400)]),
        ("deepseek/deepseek-tool-call.chunks.txt", DataDone, vec![chat(
            "cca85624-4056-401f-b220-d77601d1f70d", "deepseek-reasoner",
            u(339, 83, 422, z(320), N, z(39)), "tool_calls", 53, 49)]),
        // Output includes the 115 thought tokens: 7 + 141 = 148.
        ("google-interactions/basic.chunks.txt", Data, vec![want(
            Api::GeminiInteractions, Done,
            "v1_ChdUR3NIYXVyQkFlYVA2ZGtQajZERThBVRIXVEdzSGF1ckJBZWFQNmRrUGo2REU4QVU", "gemini-2.5-flash",
            u(7, 141, 148, z(0), N, z(115)), None, 9, 1, true)]),
        ("google/google-reasoning-gemini3.chunks.txt", Data, vec![gem(
            "M3iLaY-AI7zTxN8P3Piw4Qg", "gemini-3-pro-preview", u(9, 325, 334, N, N, z(302)), 3, 2)]),
        ("google/google-stream-tool-call-arguments.chunks.txt", Data, vec![gem(
            "dqHOab6xGLzWodAPkPuViA4", "gemini-3.1-pro-preview", u(26, 155, 181, N, N, z(132)), 8, 8)]),
        ("google/google-text.chunks.txt", Data, vec![gem(
            "bH6LaZW8Fp_3nsEPqtaSwQ4", "gemini-3-pro-preview", u(9, 208, 217, N, N, z(185)), 3, 2)]),
        ("google/google-tool-call.chunks.txt", Data, vec![gem(
            "b36LacjwM668nsEP2tbsgQQ", "gemini-3-pro-preview", u(29, 60, 89, N, N, z(45)), 2, 1)]),
        // Counts only on the last chunk; the others hold trafficType only.
        ("google/google-vertex-stream-tool-call-arguments-nested.1.chunks.txt", Data, vec![gem(
            "tjXVaYaxFISTq8YP_MWiyAo", "gemini-3.1-pro-preview", u(31, 1710, 1741, N, N, z(1026)), 76, 76)]),
        ("groq/groq-reasoning.chunks.txt", DataDone, vec![chat(
            "chatcmpl-3556c041-562b-471f-9a90-763dbcea5a3f", "qwen/qwen3-32b",
            u(17, 1107, 1124, N, N, z(963)), "stop", 1105, 1102)]),
        ("groq/groq-text.chunks.txt", DataDone, vec![chat(
            "chatcmpl-7eb08824-fb8d-47af-a1f0-3aa786f2d1f3", "llama-3.3-70b-versatile",
            u(45, 662, 707, N, N, N), "stop", 664, 661)]),
        ("groq/groq-tool-call.chunks.txt", DataDone, vec![chat(
            "chatcmpl-b610d559-f156-4aca-8827-24b4fe6af54f", "llama-3.3-70b-versatile",
            u(210, 15, 225, N, N, N), "tool_calls", 4, 1)]),
        ("lmstudio/lmstudio-tool-call.1.chunks.txt", TypedResponses, vec![resp(
            "resp_cc7bfe18e2f2eca93006515c0fd19cfed16e46a93a60444a", "zai-org/glm-4.7-flash",
            u(182, 61, 243, z(2), N, z(48)), 77, 61)]),
        ("mistral/mistral-incremental-tool-call.chunks.txt", DataDone, vec![chat(
            "735e434874a24f68a2390b3cab149242", "zai-glm-5-2",
            u(171, 14, 185, z(128), N, N), "tool_calls", 4, 1)]),
        ("mistral/mistral-reasoning.chunks.txt", DataDone, vec![chat(
            "a4e29c5b82f94d67b23e108a7c9df6e1", "magistral-medium-2507",
            u(10, 46, 56, N, N, N), "stop", 5, 3)]),
        ("mistral/mistral-text.chunks.txt", DataDone, vec![chat(
            "5319bd0299614c679a0068a4f2c8ffd0", "mistral-small-latest",
            u(13, 8, 21, N, N, N), "stop", 9, 6)]),
        ("mistral/mistral-tool-call.chunks.txt", DataDone, vec![chat(
            "b3999b8c93e04e11bcbff7bcab829667", "mistral-small-latest",
            u(124, 22, 146, N, N, N), "tool_calls", 3, 1)]),
        // No `object` key at all.
        ("moonshotai/moonshotai-stream.chunks.txt", DataDone, vec![chat(
            "chatcmpl-stream", "kimi-k3", u(9, 12, 21, N, N, z(7)), "stop", 5, 4)]),
        ("openai-chat/4cc50a6135d254573a502310e6af1246f55edb6ad95fa24059f160996b68866d.bin", Raw, vec![chat(
            "chatcmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh", "gpt-4o-2024-08-06",
            u(79, 1, 80, N, N, z(0)), "length", 5, 1)]),
        ("openai-chat/e2aad469b71d1d4894ff833ea147020a9d875eb7ce644a0ff355581690a4cbfd.bin", Raw, vec![chat(
            "chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL", "gpt-4o-2024-08-06",
            u(14, 30, 44, N, N, z(0)), "stop", 34, 30)]),
        ("openai-chat/openai-text.chunks.txt", DataDone, vec![chat(
            "chatcmpl-D8Z5oo6uDh67AD85p73ksdT1KxhE0", "gpt-4.1-nano-2025-04-14",
            u(16, 300, 316, z(0), N, z(0)), "stop", 304, 300)]),
        // Ends with `data: [DONE]\n` and no blank line: [DONE] is never
        // dispatched. No usage in this stream.
        ("openai-compatible/anthropic-fallback-tool-call.sse", Raw, vec![want(
            Chat, Done, "msg_sanitized", "claude-haiku-4-5-20251001", None, Some("tool_calls"), 9, 4, true)]),
        ("openai-completions/openai-completion-text.chunks.txt", DataDone, vec![want(
            Api::Completions, Incomplete, "cmpl-D8ZFN477TMm6AoQohx2jSTOJMh60M",
            "gpt-3.5-turbo-instruct:20230824-v2", u(14, 16, 30, N, N, N), Some("length"), 18, 16, true)]),
        // Item and response ids rotate between events; the first one is kept.
        ("openai-responses/github-copilot-id-rotation.1.chunks.txt", TypedResponses, vec![resp(
            "capture-id-1", "gpt-5.3-codex", u(19, 105, 124, z(0), z(0), z(44)), 69, 56)]),
        ("openai-responses/openai-apply-patch-tool.1.chunks.txt", TypedResponses, vec![resp(
            "resp_0372d86dfc1762fe00692741f339a08190bce9b78ee2079295", "gpt-5.1-2025-11-13",
            u(642, 67, 709, z(0), N, z(0)), 38, 32)]),
        ("openai-responses/openai-code-interpreter-tool.1.chunks.txt", TypedResponses, vec![resp(
            "resp_68c2e6efa238819383d5f52a2c2a3baa02d3a5742c7ddae9", "gpt-5-nano-2025-08-07",
            u(6047, 1623, 7670, z(2944), N, z(1408)), 393, 358)]),
        ("openai-responses/openai-compaction.1.chunks.txt", TypedResponses, vec![resp(
            "resp_0e2ed64344ac7f31016994b30480ac819785e6e4cd43a28c52", "gpt-5.2-2025-12-11",
            u(51097, 2505, 53602, z(49792), N, z(0)), 825, 815)]),
        ("openai-responses/openai-custom-tool.1.chunks.txt", TypedResponses, vec![resp(
            "resp_custom_tool_test_001", "gpt-5.2-codex", u(50, 20, 70, z(0), N, z(0)), 8, 3)]),
        ("openai-responses/openai-error.1.chunks.txt", TypedResponses, vec![want(
            Resp, Status::Failed, "resp_05500b38c2cd9bfc00691c7c9d222481a3b595421266dab424",
            "gpt-5-nano-2025-08-07", None, None, 4, 0, true)]),
        ("openai-responses/openai-file-search-tool.1.chunks.txt", TypedResponses, vec![resp(
            "resp_0459517ad68504ad0068cabfba22b88192836339640e9a765a", "gpt-5-mini-2025-08-07",
            u(3737, 621, 4358, z(2304), N, z(512)), 94, 75)]),
        ("openai-responses/openai-image-generation-tool.1.chunks.txt", TypedResponses, vec![resp(
            "resp_0df93c0bb83a72f20068c979db26ac819e8b5a444fad3f0d7f", "gpt-5-2025-08-07",
            u(2941, 1249, 4190, z(1920), N, z(1024)), 16, 0)]),
        ("openai-responses/openai-mcp-tool.1.chunks.txt", TypedResponses, vec![resp(
            "resp_0c72b1033351981300690ccf79c6d88193b7d054f4f83ad50a", "gpt-5-mini-2025-08-07",
            u(11791, 963, 12754, z(0), N, z(512)), 373, 345)]),
        ("openai-responses/openai-phase.1.chunks.txt", TypedResponses, vec![resp(
            "resp_0a63f40a2632b74300699f8818e5648196a8fa657ae8091421", "gpt-5.3-codex",
            u(7112, 463, 7575, z(3072), N, z(64)), 17, 4)]),
        ("openai-responses/openai-reasoning-encrypted-content.1.chunks.txt", TypedResponses, vec![
            resp("resp_01830d662ab3856501693c321345c88190b0de00f3b9975691", "gpt-5.1-codex-max",
                u(134, 28, 162, z(0), N, z(0)), 56, 45),
            resp("resp_01830d662ab3856501693c3215903881909b710d150ff65014", "gpt-5.1-codex-max",
                u(221, 26, 247, z(0), N, z(0)), 19, 13),
            resp("resp_01830d662ab3856501693c3216bef88190bf0e034cff24137b", "gpt-5.1-codex-max",
                u(260, 26, 286, z(0), N, z(0)), 19, 13),
            resp("resp_01830d662ab3856501693c3217ba4c8190a3ddf6c839d4f12a", "gpt-5.1-codex-max",
                u(299, 12, 311, z(0), N, z(0)), 16, 8),
        ]),
        ("openai-responses/openai-shell-tool.1.chunks.txt", TypedResponses, vec![
            resp("resp_0434d6d64b12b08900692f639c40408195a50fd07b77ce08a7", "gpt-5.1-2025-11-13",
                u(145, 41, 186, z(0), N, z(0)), 12, 5),
            resp("resp_0434d6d64b12b08900692f639d784481959af65f985b9c13e2", "gpt-5.1-2025-11-13",
                u(331, 166, 497, z(0), N, z(0)), 170, 162),
        ]),
        // No sequence_number on any event.
        ("openai-responses/openai-tool-search.1.chunks.txt", TypedResponses, vec![resp(
            "resp_08a14073c7135dc10069aa68621de481908b2fc660fb4fc0af", "gpt-5.4-2026-03-05",
            u(640, 46, 686, z(0), N, z(20)), 23, 13)]),
        ("openai-responses/openai-web-search-tool.1.chunks.txt", TypedResponses, vec![resp(
            "resp_0cc96ac817fdc57e00693337060a408198b92bf1f99cf1b8ec", "gpt-5-mini-2025-08-07",
            u(31073, 4416, 35489, z(3712), N, z(3712)), 185, 121)]),
        // Running totals on every chunk: the last one (434), never a sum.
        ("perplexity/perplexity-text.chunks.txt", DataDone, vec![chat(
            "a3d55d44-63f9-4704-bb26-e17be1ddab3a", "sonar", u(11, 434, 445, N, N, N), "stop", 9, 7)]),
        ("xai/xai-text-streaming.1.chunks.txt", TypedResponses, vec![resp(
            "769f3302-64f9-4c72-2b48-860c87fd9b2a", "grok-code-fast-1",
            u(216, 863, 1079, z(192), N, z(237)), 698, 685)]),
        // completion_tokens 1 excludes reasoning 290: output = 291.
        ("xai/xai-text.chunks.txt", DataDone, vec![chat(
            "7327b9f5-1c2f-0a15-3fef-c14a71c460d3", "grok-3-mini",
            u(12, 291, 303, z(11), N, z(290)), "stop", 9, 6)]),
    ]
}

fn gem(
    id: &'static str,
    model: &'static str,
    usage: Option<Six>,
    events: u64,
    deltas: u64,
) -> Want {
    want(
        Api::Gemini,
        Done,
        id,
        model,
        usage,
        Some("STOP"),
        events,
        deltas,
        true,
    )
}

// ---------------------------------------------------------------- wire bytes

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus")
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The `type` of a chunk line (serde_json is only the test's reference).
fn line_type(line: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line).expect("corpus line is JSON");
    value["type"].as_str().expect("typed line").to_owned()
}

#[derive(Clone, Copy, Debug)]
struct Variant {
    crlf: bool,
    keepalive: bool,
    /// Append `data: [DONE]` to a Responses stream.
    responses_done: bool,
}

const PLAIN: Variant = Variant {
    crlf: false,
    keepalive: false,
    responses_done: false,
};

fn wire(rel: &str, kind: Wire, v: Variant) -> Vec<u8> {
    let raw = read(rel);
    let mut out = Vec::new();
    if kind == Wire::Raw {
        out = raw;
        if v.keepalive {
            out = replace(&out, b"\n\n", b"\n\n: keep-alive\n\n");
        }
    } else {
        let text = String::from_utf8(raw).expect("corpus is UTF-8");
        for (i, line) in text
            .split('\n')
            .filter(|l| !l.trim().is_empty())
            .enumerate()
        {
            if v.keepalive && i % 3 == 0 {
                out.extend_from_slice(b": keep-alive\n\n");
            }
            if matches!(kind, Wire::Typed | Wire::TypedResponses) {
                out.extend_from_slice(format!("event: {}\n", line_type(line)).as_bytes());
            }
            out.extend_from_slice(format!("data: {line}\n\n").as_bytes());
        }
        if kind == Wire::DataDone || (kind == Wire::TypedResponses && v.responses_done) {
            out.extend_from_slice(b"data: [DONE]\n\n");
        }
    }
    if v.crlf {
        out = replace(&out, b"\n", b"\r\n");
    }
    out
}

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2);
    let mut rest = data;
    while let Some(at) = memchr::memmem::find(rest, from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

// ---------------------------------------------------------------- feeding

/// xorshift64*: a tiny deterministic PRNG for chunk sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn run_chunks<'a>(hint: ApiHint, chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Report> {
    let mut tap = UsageTap::new(hint, DecoderConfig::default());
    for chunk in chunks {
        tap.feed(chunk);
    }
    tap.finish()
}

fn run(bytes: &[u8]) -> Vec<Report> {
    run_chunks(ApiHint::Auto, [bytes])
}

fn random_chunks(bytes: &[u8], seed: u64, max: usize) -> Vec<&[u8]> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = (1 + rng.below(max)).min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// Reports with byte counts set aside: bytes are attributed by chunk, so
/// with several reports their split depends on the chunking.
fn without_bytes(reports: &[Report]) -> Vec<Report> {
    reports
        .iter()
        .map(|r| Report {
            bytes: 0,
            ..r.clone()
        })
        .collect()
}

fn six(report: &Report) -> Option<Six> {
    report.usage.as_ref().map(|u| {
        [
            u.input_tokens,
            u.output_tokens,
            u.total_tokens,
            u.cached_input_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
        ]
    })
}

fn check(rel: &str, reports: &[Report], wants: &[Want], extra_done_event: bool) {
    assert_eq!(reports.len(), wants.len(), "{rel}: number of reports");
    for (i, (got, want)) in reports.iter().zip(wants).enumerate() {
        let ctx = format!("{rel} report {i}");
        assert_eq!(got.api, want.api, "{ctx}: api");
        assert_eq!(got.status, want.status, "{ctx}: status");
        assert_eq!(got.response_id.as_deref(), want.id, "{ctx}: response_id");
        assert_eq!(got.model.as_deref(), want.model, "{ctx}: model");
        assert_eq!(six(got), want.usage, "{ctx}: usage");
        assert_eq!(
            got.finish_reason.as_deref(),
            want.finish_reason,
            "{ctx}: finish_reason"
        );
        let last = i + 1 == wants.len();
        let events = want.events + u64::from(extra_done_event && last);
        assert_eq!(got.events, events, "{ctx}: events");
        assert_eq!(got.delta_chunks, want.deltas, "{ctx}: delta_chunks");
        assert_eq!(
            got.done,
            want.done || (extra_done_event && last),
            "{ctx}: done"
        );
        assert_eq!(got.invalid_json_events, 0, "{ctx}: invalid JSON");
        assert_eq!(got.oversized_events, 0, "{ctx}: oversized");
        if let Some(usage) = &got.usage {
            let raw: serde_json::Value =
                serde_json::from_str(&usage.raw).expect("usage.raw is JSON");
            assert!(raw.is_object(), "{ctx}: usage.raw is an object");
        }
    }
}

#[test]
fn corpus_is_fully_covered() {
    let listed: Vec<&str> = cases().iter().map(|(rel, _, _)| *rel).collect();
    let mut files = Vec::new();
    for dir in std::fs::read_dir(corpus_dir()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            let rel = path
                .strip_prefix(corpus_dir())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            files.push(rel);
        }
    }
    files.sort();
    let mut listed_sorted: Vec<String> = listed.iter().map(|s| (*s).to_owned()).collect();
    listed_sorted.sort();
    assert_eq!(files, listed_sorted, "every corpus file has expectations");
}

#[test]
fn corpus_reports() {
    for (rel, kind, wants) in cases() {
        let bytes = wire(rel, kind, PLAIN);
        let reports = run(&bytes);
        check(rel, &reports, &wants, false);
        let total: u64 = reports.iter().map(|r| r.bytes).sum();
        assert_eq!(total, bytes.len() as u64, "{rel}: bytes");
        if kind == Wire::TypedResponses {
            let with_done = wire(
                rel,
                kind,
                Variant {
                    responses_done: true,
                    ..PLAIN
                },
            );
            check(rel, &run(&with_done), &wants, true);
        }
    }
}

#[test]
fn corpus_crlf_and_keepalive_change_nothing() {
    for (rel, kind, wants) in cases() {
        let base = without_bytes(&run(&wire(rel, kind, PLAIN)));
        for v in [
            Variant {
                crlf: true,
                ..PLAIN
            },
            Variant {
                keepalive: true,
                ..PLAIN
            },
            Variant {
                crlf: true,
                keepalive: true,
                ..PLAIN
            },
        ] {
            let got = run(&wire(rel, kind, v));
            assert_eq!(without_bytes(&got), base, "{rel} {v:?}");
            check(rel, &got, &wants, false);
        }
    }
}

#[test]
fn corpus_chunking_changes_nothing() {
    for (rel, kind, _) in cases() {
        for v in [
            PLAIN,
            Variant {
                crlf: true,
                keepalive: true,
                ..PLAIN
            },
        ] {
            let bytes = wire(rel, kind, v);
            let whole = run(&bytes);
            let base = without_bytes(&whole);
            if bytes.len() <= 16 * 1024 {
                let got = run_chunks(ApiHint::Auto, bytes.chunks(1));
                assert_eq!(without_bytes(&got), base, "{rel} {v:?} byte by byte");
            }
            for (seed, max) in [(1, 7), (2, 64), (3, 700), (4, 5000), (0x9E37_79B9, 40)] {
                let got = run_chunks(ApiHint::Auto, random_chunks(&bytes, seed, max));
                assert_eq!(without_bytes(&got), base, "{rel} {v:?} seed {seed}");
                if whole.len() == 1 {
                    assert_eq!(got[0].bytes, bytes.len() as u64, "{rel}: bytes");
                }
            }
        }
    }
}

#[test]
fn corpus_with_explicit_hints() {
    for (rel, kind, wants) in cases() {
        let hint = match wants[0].api {
            Api::ChatCompletions => ApiHint::ChatCompletions,
            Api::Completions => ApiHint::Completions,
            Api::Responses => ApiHint::Responses,
            Api::AnthropicMessages => ApiHint::AnthropicMessages,
            Api::Gemini => ApiHint::Gemini,
            Api::GeminiInteractions => ApiHint::GeminiInteractions,
            Api::Cohere => ApiHint::Cohere,
            other => panic!("no hint for {other:?}"),
        };
        let bytes = wire(rel, kind, PLAIN);
        let got = run_chunks(hint, [&bytes[..]]);
        assert_eq!(got, run(&bytes), "{rel}: hint {hint}");
        // A wrong hint finds nothing but never panics.
        let wrong = if hint == ApiHint::Gemini {
            ApiHint::Cohere
        } else {
            ApiHint::Gemini
        };
        let got = run_chunks(wrong, [&bytes[..]]);
        assert!(
            got.iter()
                .all(|r| r.api == Api::Gemini || r.api == Api::Cohere),
            "{rel}"
        );
    }
}

#[test]
fn corpus_error_payloads() {
    let bytes = wire(
        "openai-responses/openai-error.1.chunks.txt",
        Wire::TypedResponses,
        PLAIN,
    );
    let report = &run(&bytes)[0];
    let error: serde_json::Value = serde_json::from_str(report.error.as_deref().unwrap()).unwrap();
    assert_eq!(error["code"], "insufficient_quota");
    assert_eq!(
        error["type"], "insufficient_quota",
        "the nested error object of the `error` event"
    );
}

#[test]
fn corpus_usage_raw_is_the_providers_object() {
    let bytes = wire("cohere/cohere-text.chunks.txt", Wire::Typed, PLAIN);
    let usage = run(&bytes)[0].usage.clone().unwrap();
    assert_eq!(
        usage.raw,
        r#"{"billed_units":{"input_tokens":12,"output_tokens":7},"tokens":{"input_tokens":507,"output_tokens":10},"cached_tokens":448}"#
    );
    let bytes = wire(
        "anthropic/anthropic-message-delta-input-tokens.chunks.txt",
        Wire::Typed,
        PLAIN,
    );
    let usage = run(&bytes)[0].usage.clone().unwrap();
    assert_eq!(usage.raw, r#"{"input_tokens":61,"output_tokens":2}"#);
    let bytes = wire("anthropic/anthropic-text.chunks.txt", Wire::Typed, PLAIN);
    let raw: serde_json::Value =
        serde_json::from_str(&run(&bytes)[0].usage.clone().unwrap().raw).unwrap();
    assert_eq!(raw["output_tokens"], 30);
    assert_eq!(
        raw["service_tier"], "standard",
        "message_start keys are kept"
    );
}

#[test]
fn spliced_anthropic_stream_is_flagged() {
    let bytes = wire(
        "anthropic/spliced-message-start.chunks.txt",
        Wire::Typed,
        PLAIN,
    );
    let reports = run(&bytes);
    for report in &reports {
        assert!(report
            .warnings
            .iter()
            .any(|w| w.contains("msg_second") && w.contains("msg_first")));
    }
}

/// Both captures end without the blank line after their last event
/// (`message_stop`, `[DONE]`): the event is still read, with a warning.
#[test]
fn unterminated_raw_streams_warn() {
    for rel in [
        "anthropic/basic_response.txt",
        "openai-compatible/anthropic-fallback-tool-call.sse",
    ] {
        let report = &run(&read(rel))[0];
        assert!(report.done, "{rel}");
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("without the blank line")),
            "{rel}"
        );
    }
}

#[test]
fn corpus_mutations_never_panic() {
    let mut rng = Rng(0xC0FF_EE00);
    for (rel, kind, _) in cases() {
        let bytes = wire(rel, kind, PLAIN);
        for _ in 0..8 {
            let mut mutated = bytes.clone();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(mutated.len());
                mutated[at] = rng.next() as u8;
            }
            let cut = rng.below(mutated.len() + 1);
            let hint = ApiHint::ALL[rng.below(ApiHint::ALL.len())];
            let reports = run_chunks(hint, random_chunks(&mutated[..cut], rng.next(), 300));
            assert!(!reports.is_empty(), "{rel}");
        }
    }
}

// ---------------------------------------------------------------- truncation

/// The first `n` lines of a chunk file, as `wire` frames them, with no
/// `[DONE]`: a stream cut off by the client or the network.
fn cut(rel: &str, kind: Wire, n: usize) -> Vec<u8> {
    let text = String::from_utf8(read(rel)).unwrap();
    let mut out = Vec::new();
    for line in text.split('\n').filter(|l| !l.trim().is_empty()).take(n) {
        if kind == Wire::Typed {
            out.extend_from_slice(format!("event: {}\n", line_type(line)).as_bytes());
        }
        out.extend_from_slice(format!("data: {line}\n\n").as_bytes());
    }
    out
}

#[test]
fn truncated_streams_have_no_usage() {
    // openai-text: 301 content chunks, the finish chunk, then the usage chunk.
    let report = &run(&cut("openai-chat/openai-text.chunks.txt", Wire::Data, 300))[0];
    assert_eq!(
        (report.status, report.usage.is_none(), report.done),
        (Truncated, true, false)
    );
    assert_eq!(
        report.response_id.as_deref(),
        Some("chatcmpl-D8Z5oo6uDh67AD85p73ksdT1KxhE0")
    );
    // Cut after the finish chunk but before the usage chunk: finished, no usage.
    let report = &run(&cut("openai-chat/openai-text.chunks.txt", Wire::Data, 302))[0];
    assert_eq!((report.status, report.usage.is_none()), (Done, true));
    // Responses: everything but response.completed.
    let report = &run(&cut(
        "openai-responses/openai-phase.1.chunks.txt",
        Wire::Typed,
        16,
    ))[0];
    assert_eq!(
        (report.status, report.usage.is_none(), report.done),
        (Truncated, true, false)
    );
    // Gemini: counts arrive only with the last Vertex chunk.
    let rel = "google/google-vertex-stream-tool-call-arguments-nested.1.chunks.txt";
    let report = &run(&cut(rel, Wire::Data, 75))[0];
    assert_eq!((report.status, report.usage.is_none()), (Truncated, true));
    // Anthropic: message_start's usage is all there is before message_delta.
    let report = &run(&cut("anthropic/anthropic-text.chunks.txt", Wire::Typed, 10))[0];
    assert_eq!(report.status, Truncated);
    assert_eq!(report.usage.as_ref().and_then(|u| u.output_tokens), Some(1));
    // Cut in the middle of the usage event itself.
    let full = wire("openai-chat/openai-text.chunks.txt", Wire::DataDone, PLAIN);
    let at = memchr::memmem::rfind(&full, b"\"usage\":{").unwrap();
    let report = &run(&full[..at])[0];
    assert_eq!((report.status, report.usage.is_none()), (Done, true));
    assert_eq!(report.invalid_json_events, 1);
    assert!(report
        .warnings
        .iter()
        .any(|w| w.contains("without the blank line")));
}

// ---------------------------------------------------------------- speed

/// Throughput on synthetic ~330-byte-event streams (run with
/// `cargo test --release --test rust_usage -- --ignored --nocapture`).
#[test]
#[ignore = "benchmark"]
fn throughput() {
    let chat_line = r#"{"id":"chatcmpl-D8Z5oo6uDh67AD85p73ksdT1KxhE0","object":"chat.completion.chunk","created":1770762188,"model":"gpt-4.1-nano-2025-04-14","service_tier":"default","system_fingerprint":"fp_7f8eb7d1f9","choices":[{"index":0,"delta":{"content":" Hello"},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"abcdefghijklmn"}"#;
    let resp_line = r#"{"type":"response.output_text.delta","sequence_number":17,"item_id":"msg_0a63f40a2632b74300699f8818e5648196a8fa657ae8091421aa","output_index":0,"content_index":0,"delta":" Hello","logprobs":[],"obfuscation":"abcdefghijklmnopqrstu"}"#;
    let streams = [
        ("chat", format!("data: {chat_line}\n\n").repeat(30_000)),
        (
            "responses",
            format!("event: response.output_text.delta\ndata: {resp_line}\n\n").repeat(30_000),
        ),
    ];
    for (name, stream) in streams {
        let bytes = stream.as_bytes();
        let rounds = 20;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            let reports = run_chunks(ApiHint::Auto, bytes.chunks(64 * 1024));
            assert_eq!(reports[0].delta_chunks, 30_000);
        }
        let secs = start.elapsed().as_secs_f64();
        let gbps = (bytes.len() * rounds) as f64 / secs / 1e9;
        println!(
            "{name}: {} bytes/event, {gbps:.2} GB/s",
            bytes.len() / 30_000
        );
    }
}

// ---------------------------------------------------------------- outputs

fn outputs(bytes: &[u8]) -> Vec<ssetally::reassemble::Output> {
    for chunks in [vec![bytes], random_chunks(bytes, 7, 97)] {
        let mut tap = UsageTap::new(ApiHint::Auto, DecoderConfig::default()).collecting_output();
        for chunk in &chunks {
            tap.feed(chunk);
        }
        tap.finish();
        let got: Vec<_> = tap.outputs().into_iter().cloned().collect();
        if chunks.len() > 1 {
            return got;
        }
    }
    unreachable!()
}

/// Regression: Gemini's streamed function-call arguments (`partialArgs`
/// while `willContinue`) gave 8 empty tool calls instead of 2 calls with
/// their arguments.
#[test]
fn gemini_streamed_function_call_arguments_are_reassembled() {
    let rel = "google/google-stream-tool-call-arguments.chunks.txt";
    let out = outputs(&wire(rel, Wire::Data, PLAIN));
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].response_id.as_deref(),
        Some("dqHOab6xGLzWodAPkPuViA4")
    );
    let calls: Vec<(&str, &str)> = out[0].choices[&0]
        .tool_calls
        .values()
        .map(|c| (c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("getWeather", r#"{"location":"Boston"}"#),
            ("getWeather", r#"{"location":"San Francisco"}"#)
        ]
    );
    // Nested paths (`$.recipe.ingredients[0].amount`) build nested JSON.
    let rel = "google/google-vertex-stream-tool-call-arguments-nested.1.chunks.txt";
    let out = outputs(&wire(rel, Wire::Data, PLAIN));
    let calls = &out[0].choices[&0].tool_calls;
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[&0];
    assert_eq!(call.name, "cookRecipe");
    let args: serde_json::Value = serde_json::from_str(&call.arguments).expect("valid JSON");
    let ingredients = args["recipe"]["ingredients"].as_array().expect("an array");
    assert_eq!(ingredients[0]["amount"], "16 oz");
    assert_eq!(ingredients[0]["name"], "Lasagna noodles");
    assert_eq!(ingredients[5]["name"], "Tomato sauce");
}

/// Regression: the Cerebras file holds two responses; their tool calls were
/// merged into one (`nonUsefulToolnonUsefulTool`).
#[test]
fn cerebras_two_responses_give_two_outputs() {
    let rel = "cerebras/cererebras-structured-output-tools.1.chunks.txt";
    let bytes = wire(rel, Wire::DataDone, PLAIN);
    let reports = run(&bytes);
    let out = outputs(&bytes);
    assert_eq!(reports.len(), 2);
    assert_eq!(out.len(), 2);
    for (report, output) in reports.iter().zip(&out) {
        assert_eq!(report.response_id, output.response_id);
        for call in output.choices.values().flat_map(|c| c.tool_calls.values()) {
            assert!(
                !call.name.contains("nonUsefulToolnonUsefulTool"),
                "{call:?}"
            );
            assert!(
                call.arguments.is_empty()
                    || serde_json::from_str::<serde_json::Value>(&call.arguments).is_ok(),
                "{call:?}"
            );
        }
    }
    let names: Vec<&str> = out
        .iter()
        .flat_map(|o| o.choices.values().flat_map(|c| c.tool_calls.values()))
        .map(|c| c.name.as_str())
        .collect();
    assert!(names.contains(&"nonUsefulTool"), "{names:?}");
}
