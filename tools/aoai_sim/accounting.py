"""What a request asks for, and what it costs.

Two counts are derived from a request body (docs/azure.md sections 1, 2, 6):

* the Standard *arrival charge*, Azure's character estimate:
      ceil(chars / 4) + max_tokens x max(n, best_of, 1)
  where chars are the Unicode code points of role + content text of all
  messages (chat), of the prompt (legacy completions) or of the input
  (Responses API: its instructions count as a system message).
  Embeddings: ceil(chars / 4) of the input only.  max_tokens is
  max_completion_tokens, max_tokens or max_output_tokens, else the
  deployment's default_max_tokens.

* the simulator's deterministic *"true" token count*, reported as usage:
      text:     ceil(ASCII characters / 4) + 1 per non-ASCII character
      message:  3 + text(role) + text(content) [+ 1 + text(name)] + 85 per image
      chat:     sum of messages + 3 (the reply primer)
  Legacy prompts and embedding inputs: text() of each string (a token
  array counts its length).  PTU deployments are charged this count plus
  the max tokens reserve, corrected to usage at the end.
"""

TEXT_PARTS = ('text', 'input_text', 'output_text')
IMAGE_PARTS = ('image_url', 'input_image')
IMAGE_TOKENS = 85            # a low-detail image, gpt-4o
MAX_N = 128


class BadRequest(Exception):
    """A body the service would refuse with 400 (message, param)."""

    def __init__(self, message, param=None):
        super().__init__(message)
        self.param = param


def ceil4(n):
    return (n + 3) // 4


def true_tokens(text):
    """The simulator's "true" token count of one text."""
    ascii_n = len(text.encode('ascii', 'ignore'))
    return ceil4(ascii_n) + (len(text) - ascii_n)


def content_text(content):
    """(text, images) of a message content: a string or a list of parts.

    Text parts are text; images are counted apart; audio, files and
    anything else are not text (base64 payloads must not be counted)."""
    if content is None:
        return '', 0
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        raise BadRequest('Invalid type for content: expected a string or an array', 'content')
    texts, images = [], 0
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            if part.get('type') in IMAGE_PARTS:
                images += 1
            elif isinstance(part.get('text'), str):
                texts.append(part['text'])
    return ''.join(texts), images


def chat_messages(body):
    """[(role, text, name, images)] of a chat body's messages."""
    msgs = body.get('messages')
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' is a required property", 'messages')
    out = []
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get('role'), str):
            raise BadRequest("each message needs a 'role'", 'messages')
        text, images = content_text(m.get('content'))
        name = m.get('name') if isinstance(m.get('name'), str) else None
        out.append((m['role'], text, name, images))
    return out


def responses_messages(body):
    """[(role, text, name, images)] of a Responses API body."""
    out = []
    if isinstance(body.get('instructions'), str):
        out.append(('system', body['instructions'], None, 0))
    inp = body.get('input')
    if isinstance(inp, str):
        out.append(('user', inp, None, 0))
    elif isinstance(inp, list):
        for item in inp:
            if isinstance(item, str):
                out.append(('user', item, None, 0))
            elif isinstance(item, dict) and isinstance(item.get('role'), str):
                text, images = content_text(item.get('content'))
                out.append((item['role'], text, None, images))
            elif isinstance(item, dict) and isinstance(item.get('output'), str):
                out.append(('tool', item['output'], None, 0))       # function_call_output
            elif isinstance(item, dict) and isinstance(item.get('arguments'), str):
                out.append(('assistant', item['arguments'], None, 0))   # function_call
    elif inp is not None:
        raise BadRequest("Invalid type for 'input'", 'input')
    if not out:
        raise BadRequest("Missing required parameter: 'input'.", 'input')
    return out


def strings_of(value, field):
    """(strings, token arrays' total length) of a prompt or embedding input."""
    if isinstance(value, str):
        return [value], 0
    if isinstance(value, list) and value:
        if all(isinstance(s, str) for s in value):
            return value, 0
        if all(isinstance(t, int) for t in value):
            return [], len(value)
        if all(isinstance(a, list) and all(isinstance(t, int) for t in a) for a in value):
            return [], sum(len(a) for a in value)
    raise BadRequest(f"'{field}' must be a string, an array of strings or of tokens", field)


def _positive_int(body, key, maximum=None):
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (maximum and v > maximum):
        raise BadRequest(f"Invalid value for '{key}': expected an integer"
                         f" >= 1{f' and <= {maximum}' if maximum else ''}.", key)
    return v


class Call:
    """One API call: its operation, what it asks for and what it costs.

    op is 'chat', 'completions', 'embeddings' or 'responses'."""

    def __init__(self, op, body, default_max_tokens):
        self.op = op
        self.body = body
        self.model = body.get('model')
        self.stream = body.get('stream') is True and op != 'embeddings'
        so = body.get('stream_options')
        self.has_stream_options = so is not None
        self.include_usage = (self.stream and isinstance(so, dict)
                              and so.get('include_usage') is True)

        n = _positive_int(body, 'n', MAX_N) or 1
        best_of = _positive_int(body, 'best_of', MAX_N) or 1
        self.choices = n if op in ('chat', 'completions') else 1
        self.multiplier = max(n, best_of, 1) if op in ('chat', 'completions') else 1

        if op == 'chat':
            keys = ('max_completion_tokens', 'max_tokens')
        elif op == 'responses':
            keys = ('max_output_tokens',)
        elif op == 'completions':
            keys = ('max_tokens',)
        else:
            keys = ()
        self.max_tokens = None          # as named in the body
        for k in keys:
            v = _positive_int(body, k)
            if v is not None and self.max_tokens is None:
                self.max_tokens = v
        self.reserve = self.max_tokens or (default_max_tokens if keys else 0)

        if op in ('chat', 'responses'):
            msgs = chat_messages(body) if op == 'chat' else responses_messages(body)
            chars = sum(len(role) + len(text) for role, text, _, _ in msgs)
            tokens = 3
            for role, text, name, images in msgs:
                tokens += 3 + true_tokens(role) + true_tokens(text) + IMAGE_TOKENS * images
                if name:
                    tokens += 1 + true_tokens(name)
            self.prompt_chars, self.prompt_tokens = chars, tokens
            self.charge_prompt = ceil4(chars)
        else:
            field = 'prompt' if op == 'completions' else 'input'
            if body.get(field) is None:
                raise BadRequest(f"Missing required parameter: '{field}'.", field)
            strings, token_len = strings_of(body[field], field)
            self.prompt_chars = sum(len(s) for s in strings)
            self.prompt_tokens = sum(true_tokens(s) for s in strings) + token_len
            self.charge_prompt = ceil4(self.prompt_chars) + token_len
            self.inputs = max(len(strings), 1) if strings else (
                len(body[field]) if isinstance(body[field][0], list) else 1)

        # Standard: Azure's estimate at arrival; PTU: "true" prompt + reserve
        self.standard_charge = self.charge_prompt + self.reserve * self.multiplier
        self.ptu_charge = self.prompt_tokens + self.reserve * self.multiplier

    def completion_per_choice(self, configured):
        """Reply length of each choice and its finish reason."""
        if self.op == 'embeddings':
            return 0, None
        if self.reserve < configured:
            return self.reserve, 'length'
        return configured, 'stop'
