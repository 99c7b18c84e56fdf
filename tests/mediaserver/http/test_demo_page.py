"""`GET /` serves the demo page and its static script, no build step."""

import httpx

from tests.mediaserver.webrtc.loopback import run, running_server


def test_the_demo_page_and_its_script_are_served(tmp_path):
    async def scenario():
        async with (
            running_server(tmp_path) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            page = await client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert 'id="key"' in page.text and "/static/demo.js" in page.text
            script = await client.get("/static/demo.js")
            assert script.status_code == 200
            assert "/signal/" in script.text and '"offer"' in script.text
            assert (await client.get("/static/demo.css")).status_code == 200

    run(scenario)
