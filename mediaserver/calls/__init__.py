"""The per-call edge glue every transport shares (WebRTC signaling, WHIP, telephony).

    CallEdge (one per server)   authenticate a key, open a call: refusals, agent, engines,
                                admission through the Switchboard, store rows
    LiveCall (one per call)     the transport's way into the call tree, and the pump that
                                turns the tree's outbound messages into transport calls,
                                store writes and the one end of the call
    Transport (a Protocol)      what a transport implements: send_event, send_audio,
                                flush_audio, close(reason)
    CallOutbox, CallRecorder    the call's Outbox on the loop; its store writer
    AdmissionLedger, LocalLedger (ledger.py)   call slots and per-minute windows: the one place
                                that counts calls (a remote ledger fits the same protocol)
    LoadGate (load_gate.py)     refuses new calls while the loop or the dispatcher lags;
                                DispatchLagProbe (dispatch_lag.py) measures the dispatcher

A transport's life with a call:

    company = await edge.authenticate(key)                       # CallRefusal("unauthorized")
    call = await edge.open_call(company, transport=self, transport_name="webrtc",
                                peer_id=..., agent_id=None)      # CallRefusal(reason)
    call.audio_received(pcm16k, captured_at); call.text_received(text); call.media_connected()
    call.playback_progressed(turn_id, played_ms); call.hang_up("bye")
    await call.finished.wait()                                   # after Transport.close(reason)
"""

from mediaserver.calls.edge import REFUSALS, CallEdge, CallRefusal, EngineSource, Refusal
from mediaserver.calls.live_call import CallEvent, LiveCall, Transport

__all__ = [
    "REFUSALS",
    "CallEdge",
    "CallEvent",
    "CallRefusal",
    "EngineSource",
    "LiveCall",
    "Refusal",
    "Transport",
]
