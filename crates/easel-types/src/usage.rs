//! Token counts in OpenAI's image usage shape. How they are estimated (the tokenizer, the tile
//! rule, the output table) is `easel_core::usage`; this is only the numbers.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_text_tokens: u64,
    pub input_image_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn input_tokens(&self) -> u64 {
        self.input_text_tokens + self.input_image_tokens
    }
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens() + self.output_tokens
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        self.input_text_tokens += other.input_text_tokens;
        self.input_image_tokens += other.input_image_tokens;
        self.output_tokens += other.output_tokens;
    }
}
