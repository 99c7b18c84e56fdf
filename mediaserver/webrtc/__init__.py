"""WebRTC media with aiortc: a peer per call (peer.py), its audio tracks (tracks.py), ICE policy."""
