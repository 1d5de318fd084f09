"""The shop blueprint: browse the catalogue, place an order (the `order-placed` signal)."""

from __future__ import annotations

import uuid

from flask import Blueprint, abort, current_app, jsonify, request
from werkzeug.wrappers import Response

from examples.factory_app.signals import order_placed

shop = Blueprint("shop", __name__, url_prefix="/shop")

CATALOGUE = {"tea": 4.5, "scones": 3.0, "jam": 5.25}


@shop.get("/")
def catalogue() -> Response:
    return jsonify(CATALOGUE)


@shop.post("/orders")
def place_order() -> tuple[Response, int]:
    body = request.get_json(silent=True) or {}
    item, quantity = body.get("item"), body.get("quantity", 1)
    if item not in CATALOGUE or not isinstance(quantity, int) or quantity < 1:
        abort(400)
    order_id = uuid.uuid4().hex[:12]
    order_placed.send(
        current_app._get_current_object(), order_id=order_id, item=item, quantity=quantity
    )
    return jsonify(order_id=order_id, total=CATALOGUE[item] * quantity), 201
