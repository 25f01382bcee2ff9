"""The delivery engine: pure asyncio logic over the Store and Broker ports."""
