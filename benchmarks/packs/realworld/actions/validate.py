import pydantic
import requests


class Order(pydantic.BaseModel):
    id: int
    item: str
    quantity: int = 1


def run(**order):
    parsed = Order(**order)
    request = requests.Request("POST", "https://example.invalid/orders", json=parsed.model_dump()).prepare()
    return {"order": parsed.model_dump(), "bytes": len(request.body)}
