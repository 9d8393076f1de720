"""A check shared by the encoders, `Data2Vec2` and `fit()`: one batch array, not a list of them."""


def refuse_sequence_inputs(inputs, input_name):
    """Raises a ValueError if `inputs` is a list or tuple: an encoder and `Data2Vec2` take one batch
    array, or a dict with it under `input_name` (`"images"`, `"tokens"`, `"audio"`)."""
    if isinstance(inputs, (list, tuple)):
        kinds = sorted({type(item).__name__ for item in inputs})
        raise ValueError(
            f"`{input_name}` must be one array (a batch), got a {type(inputs).__name__} of {len(inputs)} "
            f"({', '.join(kinds) or 'nothing'}); stack the samples into one array (e.g. `np.stack`), or "
            f"pass a dict with the array under '{input_name}'."
        )
